"""``python -m train ...`` (what ``torchrun``/``deepspeed --module`` launch): same as ``engine train``."""

from engine.encoder import quiet_libraries
from train.cli import train

if __name__ == "__main__":
    quiet_libraries()
    train(prog_name="python -m train")
