"""Fine-tune a ResNet-50 on the chest X-ray dataset.

Usage:
    python train.py --data data/chest_xray --epochs 10
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from model import build_model


def get_loaders(data_dir, batch_size):
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406],
                                     std=[0.229, 0.224, 0.225])
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(224),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalize,
    ])
    val_tf = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        normalize,
    ])
    train_set = datasets.ImageFolder(f"{data_dir}/train", transform=train_tf)
    val_set = datasets.ImageFolder(f"{data_dir}/val", transform=val_tf)

    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False,
                            num_workers=0)
    return train_loader, val_loader, train_set.classes


def train_one_epoch(model, loader, criterion, optimizer):
    model.train()
    running_loss = 0.0
    for images, labels in loader:
        images = images.cuda()
        labels = labels.cuda()

        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * images.size(0)
    return running_loss / len(loader.dataset)


def validate(model, loader, criterion):
    total_loss, correct, total = 0.0, 0, 0
    for i, (images, labels) in enumerate(loader):
        outputs = model(images)
        total_loss += criterion(outputs, labels).item() * images.size(0)
        correct += (outputs.argmax(dim=1) == labels).sum().item()
        total += labels.size(0)
    return total_loss / total, correct / total


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/chest_xray")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                        help="start from ImageNet weights")
    parser.add_argument("--resume", default=None, help="checkpoint to start from")
    parser.add_argument("--out", default="resnet50_chest_xray.pt")
    args = parser.parse_args()

    train_loader, val_loader, classes = get_loaders(args.data, args.batch_size)
    model = build_model(num_classes=len(classes), pretrained=args.pretrained)
    if args.resume:
        model.load_state_dict(torch.load(args.resume))

    criterion = nn.CrossEntropyLoss()
    # only the unfrozen layers are trained
    optimizer = optim.Adam((p for p in model.parameters() if p.requires_grad), lr=args.lr)

    best_acc = 0.0
    for epoch in range(args.epochs):
        start = time.time()
        train_loss = train_one_epoch(model, train_loader, criterion, optimizer)
        val_loss, val_acc = validate(model, val_loader, criterion)
        print(f"epoch {epoch + 1}/{args.epochs}  train_loss={train_loss:.4f}  "
              f"val_loss={val_loss:.4f}  val_acc={val_acc:.3f}  ({time.time() - start:.0f}s)")
        if val_acc > best_acc:
            best_acc = val_acc
            torch.save(model.state_dict(), args.out)
    print(f"best val_acc={best_acc:.3f}, weights in {args.out}")


if __name__ == "__main__":
    main()
