"""The command-line options every training example takes; each script adds its own."""

import argparse


def training_options(doc):
    """A parser described by ``doc`` with the options of a training run on Fashion-MNIST."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2,
                        help="passes over the training set (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="images per optimiser step, in each process (default: "
                             "%(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="Adam's learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initial weights and of the shuffles (default: "
                             "%(default)s)")
    parser.add_argument("--data", metavar="DIR",
                        help="folder holding fashion-mnist/ (default: $FASTCONV_DATA, then "
                             "~/.cache/fastconv/datasets, Debian's dataset-fashion-mnist, "
                             "else a download)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="use only the first N training and N test images, for a quick run "
                             "(default: all)")
    return parser
