#!/bin/sh
# Benchmark data for bench/id_bench.py: Fashion-MNIST from the Debian package (files under
# /usr/share/datasets/fashion-mnist). Needs root (or run the apt-get line with sudo).
set -eu
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    apt-get install -y dataset-fashion-mnist
fi
ls -l /usr/share/datasets/fashion-mnist/
