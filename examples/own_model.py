"""Train your own model on your own data through the Ray block actors, then predict with it.

    python examples/own_model.py     # a local Ray cluster on this machine, about a minute

The model and the data factory live in my_models.py (a module, so that the block actors can
import it); the config names them with `model.module` and `data.factory`.
"""
import sys

import ray_al

cfg = ray_al.load_config({
    "data": {"source": "python", "factory": "my_models:digits", "val_fraction": 0.1},
    "model": {"name": "tiny_cnn", "module": "my_models", "d": 64},
    "optim": {"lr": 1e-3},
    "train": {"trainer": "al", "epochs": 10, "log_every_s": 0},
    "run_dir": "runs",
}, overrides=sys.argv[1:])  # e.g. train.epochs=2

if __name__ == "__main__":
    result = ray_al.train(cfg)                      # two Ray block actors, one per AL block
    last = result.history[-1]
    print(f"run folder {result.run_dir}: val_acc {last['val_acc']:.4f}, test_acc {last['test_acc']:.4f}, "
          f"exits {[round(last[f'exit_{k}'], 4) for k in (1, 2)]}")

    import my_models
    images = my_models.digits()["test"][0][:5]      # raw uint8 pixels, preprocessed as in training
    for answer in ray_al.predict(result.run_dir, images, exit="auto", threshold=0.9):
        print(answer)
