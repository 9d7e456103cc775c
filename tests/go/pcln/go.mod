module sightline.test/pcln

go 1.19
