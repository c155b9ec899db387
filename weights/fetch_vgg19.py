#!/usr/bin/env python3
"""Fetch or convert VGG19 weights for neural-style.

Downloads torchvision's pretrained VGG19 (IMAGENET1K_V1, ``vgg19-dcbb9e9d.pth``), verifies its
SHA-256 against the prefix torchvision publishes in the file name, keeps only ``features.*`` and
writes a safetensors file with metadata (source, sha256, preprocessing, pretrained).

``--from-file`` converts a local copy instead; ``--format vgg_conv`` converts the author's
normalised VGG19 (``vgg_conv.pth`` from leongatys/PytorchNeuralStyleTransfer, Caffe
preprocessing). Exit codes: 0 ok, 2 download failed (offline?), 3 bad file.
"""
import argparse
import hashlib
import os
import socket
import sys
import tempfile

URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
HASH_PREFIX = "dcbb9e9d"
BLOCKS = [(2, 64), (2, 128), (4, 256), (4, 512), (4, 512)]


def manifest():
    """(name, shape, caffe-style name) of every tensor, in torchvision's `features` numbering."""
    out, index, cin = [], 0, 3
    for b, (convs, ch) in enumerate(BLOCKS):
        for c in range(convs):
            short = f"conv{b + 1}_{c + 1}"
            out.append((f"features.{index}.weight", (ch, cin, 3, 3), f"{short}.weight"))
            out.append((f"features.{index}.bias", (ch,), f"{short}.bias"))
            index += 2
            cin = ch
        index += 1  # pooling
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--from-file")
    ap.add_argument("--format", choices=["torchvision", "vgg_conv"], default="torchvision")
    ap.add_argument("--url", default=URL)
    args = ap.parse_args()

    import torch
    from safetensors.torch import save_file

    socket.setdefaulttimeout(60)

    tmpdir = None
    if args.from_file:
        src, source = args.from_file, os.path.abspath(args.from_file)
    else:
        tmpdir = tempfile.mkdtemp(prefix="neural-style-fetch-")
        src, source = os.path.join(tmpdir, os.path.basename(args.url)), args.url
        print(f"downloading {args.url} (548 MB) …", file=sys.stderr)
        try:
            torch.hub.download_url_to_file(args.url, src, progress=True)
        except Exception as e:  # URLError, HTTPError, timeouts
            print(f"error: could not download {args.url}: {e}. Are you offline? "
                  "Download the file elsewhere and run `neural-style weights convert --input FILE`, "
                  "or use `neural-style weights random --out FILE` (not pretrained).", file=sys.stderr)
            return 2
    digest = sha256(src)
    if args.format == "torchvision" and not args.from_file and not digest.startswith(HASH_PREFIX):
        print(f"error: checksum mismatch for {source}: sha256 {digest} does not start with {HASH_PREFIX}; "
              "the download is corrupt — run the fetch again", file=sys.stderr)
        return 3
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:
        print(f"error: {src} is not a PyTorch state dict: {e}", file=sys.stderr)
        return 3
    tensors = {}
    for name, shape, caffe_name in manifest():
        key = name if args.format == "torchvision" else caffe_name
        if key not in state:
            print(f"error: {src} has no tensor {key}; is it a VGG19 {args.format} file?", file=sys.stderr)
            return 3
        t = state[key].float().contiguous()
        if tuple(t.shape) != shape:
            print(f"error: {src}: {key} has shape {tuple(t.shape)}, expected {shape}", file=sys.stderr)
            return 3
        tensors[name] = t
    metadata = {
        "format": "neural-style-vgg19",
        "pretrained": "true",
        "preprocessing": "torchvision" if args.format == "torchvision" else "caffe",
        "source": source,
        "sha256": digest,
        "variant": "torchvision IMAGENET1K_V1" if args.format == "torchvision" else "gatys vgg_conv (normalised)",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    part = args.out + ".part"
    save_file(tensors, part, metadata=metadata)
    os.replace(part, args.out)
    if tmpdir:
        os.remove(src)
        os.rmdir(tmpdir)
    print(f"wrote {args.out} (sha256 of source {digest})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
