module sightline.test/cgossl

go 1.19
