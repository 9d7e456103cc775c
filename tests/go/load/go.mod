module sightline.test/load

go 1.19
