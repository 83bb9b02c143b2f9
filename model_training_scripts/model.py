"""ResNet-50 for chest X-ray classification (NORMAL / PNEUMONIA).

ImageNet-pretrained backbone, early layers frozen, new classification head.
"""
import torch.nn as nn
from torchvision import models

# Layers that keep their ImageNet weights: low-level edges and textures transfer well.
FROZEN = ("conv1", "bn1", "layer1", "layer2")


def build_model(num_classes: int, pretrained: bool = True) -> nn.Module:
    weights = "IMAGENET1K_V2" if pretrained else None
    model = models.resnet50(weights=weights)

    for name, param in model.named_parameters():
        if name.startswith(FROZEN):
            param.requires_grad = False

    # replace the 1000-class ImageNet head
    in_features = model.fc.in_features
    model.fc = nn.Linear(in_features, num_classes)
    return model
