from ray_al.cli import run

run()
