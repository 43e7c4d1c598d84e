"""Images in: datasets of uint8 256x256 images, their visiting order, loading and augmentation."""
