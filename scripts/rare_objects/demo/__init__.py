"""The bundled demo and the test data: seeded street scenes with planted objects (and their
ground truth as a COCO file), the tiny models trained on them and a nuScenes-shaped dataroot.
No stage imports this."""
