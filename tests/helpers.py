"""Small things several test files need."""

from PIL import Image


def make_images(folder, n, size=(40, 30)):
    """n distinct solid-colour PNGs in `folder`: img000.png, img001.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(p)
        paths.append(p)
    return paths
