module sightline.test/probe

go 1.19
