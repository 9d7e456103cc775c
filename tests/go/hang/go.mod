module sightline.test/hang

go 1.19
