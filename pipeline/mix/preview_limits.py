"""The preview command's limits and default file name, without torch: `python -m pipeline.mix
preview --help` and a size out of bounds answer before torch is imported (3 s on a small machine)."""

# The largest image side: the models train at 224 (ImageNet) or 32 (CIFAR, the demo), and a grid
# tile is drawn 240 px wide (2.4 in at 100 dpi), so more pixels add nothing to see; the memory
# grows with the square (--size 100000 asked for 30 GB per image and never finished).
MAX_SIZE = 1024
# The most images in a grid: at 4 per row, 64 is already a 16-row figure (and 256 took 17 s to draw).
MAX_BATCH = 64
DEFAULT_NAME = "mix_preview.png"  # the file written when the output path is a folder
