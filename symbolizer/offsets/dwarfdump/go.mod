module sightline.dev/dwarfdump

go 1.19
