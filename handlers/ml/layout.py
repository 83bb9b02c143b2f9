"""The dataset as the project describes it: its splits, the image files the folder layout
holds, the normalisation the model expects and the training crop. Free of torch and of the
loaders, so the DataLoader path, the .npz reader and the DALI pipeline share one definition."""
from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
CROP_AREA = (0.85, 1.0)          # train-time crop: mild, X-rays are centred and framed
CROP_ASPECT = (0.9, 1.1)
PROJECT_FILE = "tasks/project.yaml"
