module sightline.test/idle

go 1.19
