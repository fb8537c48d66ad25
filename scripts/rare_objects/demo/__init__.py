"""The bundled demo and the test data: seeded street scenes with planted objects, the tiny models
trained on them, a nuScenes-shaped dataroot, and the demo's evaluation. No stage imports this."""
