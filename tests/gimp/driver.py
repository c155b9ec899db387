# Runs inside gimp-console-3.0 (batch, python-fu-eval) in the test chroot. The case to run is
# $NS_CASE; results go to /ci/out/$NS_CASE.json. Driven by tests/tests/gimp.rs.
import json
import os
import struct
import time
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio

CASE = os.environ["NS_CASE"]
OUT = "/ci/out/%s.json" % CASE


def put(layer, fn, fmt="R'G'B'A u8"):
    w, h = layer.get_width(), layer.get_height()
    if fmt == "R'G'B'A u8":
        data = bytes(b for y in range(h) for x in range(w) for b in fn(x, y))
    else:
        data = b"".join(struct.pack("<4f", *fn(x, y)) for y in range(h) for x in range(w))
    buf = layer.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, w, h), fmt, data)
    buf.flush()


def get(drawable, fmt="R'G'B'A u8"):
    w, h = drawable.get_width(), drawable.get_height()
    return bytes(drawable.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, fmt, Gegl.AbyssPolicy.NONE))


def new_image(w, h, base=Gimp.ImageBaseType.RGB, precision=None):
    if precision is None:
        return Gimp.Image.new(w, h, base)
    return Gimp.Image.new_with_precision(w, h, base, precision)


def add_layer(img, name, w, h, fn, x=0, y=0, pos=0, fmt="R'G'B'A u8"):
    t = Gimp.ImageType.RGBA_IMAGE if img.get_base_type() == Gimp.ImageBaseType.RGB else Gimp.ImageType.GRAYA_IMAGE
    layer = Gimp.Layer.new(img, name, w, h, t, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(layer, None, pos)
    layer.set_offsets(x, y)
    put(layer, fn, fmt)
    return layer


def content_fn(x, y):
    return (x * 5 % 256, y * 7 % 256, (x * y) % 256, 255)


def style_a(x, y):
    return (255 if (x // 4 + y // 4) % 2 else 20, 40, 200 if x % 3 else 10, 255)


def style_b(x, y):
    return (30, (x * 13 + y * 29) % 256, 90, 255)


def run_plugin(img, drawables, **kw):
    proc = Gimp.get_pdb().lookup_procedure("plug-in-neural-style")
    cfg = proc.create_config()
    cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    cfg.set_property("image", img)
    cfg.set_core_object_array("drawables", drawables)
    cfg.set_property("iterations", kw.pop("iterations", 20))
    cfg.set_property("init", kw.pop("init", "content"))
    for k, v in kw.items():
        cfg.set_property(k, v)
    res = proc.run(cfg)
    status = res.index(0)
    layer = res.index(1) if status == Gimp.PDBStatusType.SUCCESS else None
    error = None
    if status != Gimp.PDBStatusType.SUCCESS:
        try:
            error = res.index(1)
        except Exception:
            error = None
    return status, layer, error


def describe(img, layer):
    _, x, y = layer.get_offsets()
    return {"name": layer.get_name(), "width": layer.get_width(), "height": layer.get_height(),
            "x": x, "y": y, "position": img.get_item_position(layer),
            "has_mask": layer.get_mask() is not None, "type": int(layer.type())}


def two_layers(img_w=64, img_h=48):
    img = new_image(img_w, img_h)
    content = add_layer(img, "photo", 40, 30, content_fn, x=5, y=7, pos=0)
    style = add_layer(img, "painting", 32, 32, style_a, pos=0)
    return img, content, style


def case_two_layers():
    img, content, style = two_layers()
    # from white noise: the result is the optimisation's own, not a near-copy of the content
    status, layer, err = run_plugin(img, [style, content], init="noise")
    assert status == Gimp.PDBStatusType.SUCCESS, err
    d = describe(img, layer)
    d["content_position"] = img.get_item_position(content)
    d["differs_from_content"] = get(layer) != get(content)
    first = get(layer)
    # another style gives other pixels
    put(style, style_b)
    status, layer2, err = run_plugin(img, [style, content], init="noise")
    assert status == Gimp.PDBStatusType.SUCCESS, err
    d["depends_on_style"] = get(layer2) != first
    d["layers"] = len(img.get_layers())
    return d


def case_selection():
    out = {}
    for kind in ("rect", "ellipse"):
        img, content, style = two_layers()
        if kind == "rect":
            img.select_rectangle(Gimp.ChannelOps.REPLACE, 10, 10, 20, 15)
        else:
            img.select_ellipse(Gimp.ChannelOps.REPLACE, 8, 9, 30, 24)
            Gimp.Selection.feather(img, 6.0)
        status, layer, err = run_plugin(img, [style, content])
        assert status == Gimp.PDBStatusType.SUCCESS, err
        mask = layer.get_mask()
        m = get(mask, "Y u8")
        # the mask must equal the selection seen from the layer's offsets (5, 7)
        selbuf = img.get_selection().get_buffer()
        w, h = layer.get_width(), layer.get_height()
        s = bytes(selbuf.get(Gegl.Rectangle.new(5, 7, w, h), 1.0, "Y u8", Gegl.AbyssPolicy.NONE))
        out[kind] = {"has_mask": True, "mask_equals_selection": m == s,
                     "partial": sum(1 for v in m if 0 < v < 255), "inside": sum(1 for v in m if v == 255),
                     "outside": sum(1 for v in m if v == 0)}
    return out


def case_sixteen_bit():
    img = new_image(40, 30, precision=Gimp.Precision.U16_NON_LINEAR)
    f = lambda x, y: (x / 39.0, y / 29.0, 0.3, 1.0)  # noqa: E731
    content = add_layer(img, "deep", 40, 30, f, fmt="R'G'B'A float")
    style = add_layer(img, "paint", 24, 24, lambda x, y: ((x % 5) / 5.0, 0.2, (y % 7) / 7.0, 1.0), fmt="R'G'B'A float")
    status, layer, err = run_plugin(img, [style, content], iterations=3)
    assert status == Gimp.PDBStatusType.SUCCESS, err
    vals = struct.unpack("<%df" % (40 * 30 * 4), get(layer, "R'G'B'A float"))
    # values that 8 bits cannot represent prove the precision was kept
    off_grid = sum(1 for v in vals if abs(v * 255 - round(v * 255)) > 0.05)
    return {"precision": int(img.get_precision()), "off_grid": off_grid, "count": len(vals),
            **describe(img, layer)}


def case_grayscale():
    img = new_image(40, 30, base=Gimp.ImageBaseType.GRAY)
    content = Gimp.Layer.new(img, "gray", 40, 30, Gimp.ImageType.GRAYA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(content, None, 0)
    buf = content.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, 40, 30), "Y'A u8", bytes(b for y in range(30) for x in range(40) for b in ((x * 6 + y) % 256, 255)))
    buf.flush()
    style = Gimp.Layer.new(img, "gstyle", 20, 20, Gimp.ImageType.GRAYA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(style, None, 0)
    buf = style.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, 20, 20), "Y'A u8", bytes(b for y in range(20) for x in range(20) for b in ((x * y * 9) % 256, 255)))
    buf.flush()
    status, layer, err = run_plugin(img, [style, content])
    assert status == Gimp.PDBStatusType.SUCCESS, err
    d = describe(img, layer)
    d["is_gray"] = layer.is_gray()
    return d


def case_style_file():
    img = new_image(40, 30)
    content = add_layer(img, "photo", 40, 30, content_fn)
    status, layer, err = run_plugin(img, [content], **{"style-file": Gio.File.new_for_path("/ci/style.jpg")})
    assert status == Gimp.PDBStatusType.SUCCESS, err
    d = describe(img, layer)
    # without a style: a clear error
    status2, _, err2 = run_plugin(img, [content])
    d["no_style_status"] = int(status2)
    d["no_style_error"] = str(err2)
    return d


def case_error(**kw):
    img, content, style = two_layers()
    before = len(img.get_layers())
    status, layer, err = run_plugin(img, [style, content], **kw)
    return {"status": int(status), "error": str(err), "layers_before": before, "layers_after": len(img.get_layers()),
            "success": status == Gimp.PDBStatusType.SUCCESS}


def case_no_binary():
    return case_error(**{"daemon-binary": "/nonexistent/neural-style"})


def case_autostart():
    return case_error(**{"daemon-binary": "/ci/fake-neural-style"})


def case_text_layer():
    img, content, style = two_layers()
    text = Gimp.TextLayer.new(img, "hello", Gimp.context_get_font(), 12.0, Gimp.Unit.pixel())
    img.insert_layer(text, None, 0)
    status, layer, err = run_plugin(img, [text, content])
    return {"status": int(status), "error": str(err), "layers": len(img.get_layers())}


def case_cancel():
    img, content, style = two_layers()
    # a long job; the test kills this plug-in while it runs
    return case_error(iterations=5000, **{"max-size": 0})


def case_daemon_dies():
    # a long job; the test kills the daemon while it runs
    return case_error(iterations=10000, init="noise")


def parasite(layer):
    """The plug-in's record of how the layer was made (JSON), or None."""
    p = layer.get_parasite("neural-style")
    return json.loads(bytes(p.get_data())) if p is not None else None


def made(img, layer, content, before):
    d = describe(img, layer)
    d.update({"layers_added": len(img.get_layers()) - before, "info": parasite(layer),
              "differs_from_content": get(layer) != get(content)})
    return d


def case_previews():
    out = {}
    # previews at the layer's size
    img, content, style = two_layers()
    before = len(img.get_layers())
    status, layer, err = run_plugin(img, [style, content], init="noise", iterations=600)
    assert status == Gimp.PDBStatusType.SUCCESS, err
    out["same_size"] = made(img, layer, content, before)
    # an output size limit below the layer's: previews and result are scaled into the layer
    img = new_image(100, 80)
    content = add_layer(img, "big", 96, 72, content_fn, x=2, y=3)
    style = add_layer(img, "painting", 32, 32, style_a, pos=0)
    before = len(img.get_layers())
    status, layer, err = run_plugin(img, [style, content], init="noise", iterations=600, **{"max-size": 48})
    assert status == Gimp.PDBStatusType.SUCCESS, err
    out["scaled"] = made(img, layer, content, before)
    return out


def case_stop():
    out = {}
    for mode in ("keep", "discard"):
        img, content, style = two_layers()
        before = len(img.get_layers())
        t0 = time.monotonic()
        status, layer, err = run_plugin(img, [style, content], init="noise", iterations=10000,
                                        **{"stop-after": 1.5, "on-cancel": mode})
        r = {"status": int(status), "seconds": time.monotonic() - t0, "error": str(err),
             "layers_added": len(img.get_layers()) - before}
        if layer is not None:
            r.update(made(img, layer, content, before))
        out[mode] = r
    out["cancel_status"] = int(Gimp.PDBStatusType.CANCEL)
    out["success_status"] = int(Gimp.PDBStatusType.SUCCESS)
    return out


result = {"case": CASE}
try:
    result.update(globals()["case_" + CASE]())
    result["ok"] = True
except Exception as e:  # report, do not crash GIMP's batch interpreter
    result["ok"] = False
    result["exception"] = "".join(traceback.format_exception(e))
os.makedirs("/ci/out", exist_ok=True)
with open(OUT, "w") as f:
    json.dump(result, f, indent=1)
