#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters → Neural Style…

Sends the selected layers to the neural-style daemon (Gatys et al. style transfer with a resident
VGG19) and inserts the stylized result as a new layer above the content layer.

- Two or more layers selected: the lowest one in the stack is the content (change it with
  "Content layer"), the others are styles (blend with "Style weights").
- One layer selected: the "Style file" argument gives the style image.

The daemon is found by the shared rule (NEURAL_STYLE_SOCKET first, see protocol/README.md); when
none runs, the plug-in starts `neural-style serve` (found via the "neural-style binary" argument,
NEURAL_STYLE_BIN, PATH or ~/.local/bin) and waits until it is ready. Standard library only
beyond GIMP's own modules.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gi  # noqa: E402

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GLib, GObject  # noqa: E402

import ns_protocol as proto  # noqa: E402

PROC = "plug-in-neural-style"
FLAGS = GObject.ParamFlags.READWRITE
# previews: every this many seconds, at most this long a side
PREVIEW_EVERY_S = 1.0
MAX_PREVIEW = 1024
# the layer parasite that says how a layer was made
PARASITE = "neural-style"


class UserError(Exception):
    """Something the user can fix; shown as the procedure's error message."""


def choice(*items):
    c = Gimp.Choice.new()
    for i, (nick, label) in enumerate(items):
        c.add(nick, i, label, "")
    return c


def high_precision(image):
    return image.get_precision() not in (Gimp.Precision.U8_LINEAR, Gimp.Precision.U8_NON_LINEAR,
                                          Gimp.Precision.U8_PERCEPTUAL)


def read_pixels(drawable, hp):
    """(width, height, format name for the daemon, bytes) of a drawable as RGBA."""
    w, h = drawable.get_width(), drawable.get_height()
    fmt = "R'G'B'A float" if hp else "R'G'B'A u8"
    data = drawable.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, fmt, Gegl.AbyssPolicy.NONE)
    return w, h, ("rgba32f" if hp else "rgba8"), bytes(data)


def check_drawable(d, role):
    name = d.get_name()
    if d.is_layer_mask():
        raise UserError("'%s' is a layer mask; select the layer itself as %s." % (name, role))
    if d.is_channel():
        raise UserError("'%s' is a channel; select a layer as %s." % (name, role))
    if d.is_group():
        raise UserError("'%s' is a layer group; select a pixel layer as %s (or merge the group first)."
                        % (name, role))
    if d.is_text_layer():
        raise UserError("'%s' is a text layer; rasterize it first (Layer → Discard Text Information) to use it as %s."
                        % (name, role))


def connect(config, progress_text):
    """A greeted connection, starting the daemon when none runs."""
    socket = config.get_property("socket") or None
    try:
        return proto.Connection(socket)
    except proto.NoDaemon:
        pass
    binary = proto.find_binary(config.get_property("daemon-binary") or None)
    if binary is None:
        raise UserError(
            "The neural-style daemon is not running at %s and the neural-style program was not found "
            "(looked at the 'neural-style binary' setting, NEURAL_STYLE_BIN, PATH and ~/.local/bin). "
            "Install it (make install in the neural-style checkout) or start `neural-style serve`."
            % proto.socket_path(socket))
    progress_text("Neural Style: starting the daemon (%s)…" % binary)
    try:
        return proto.start_daemon(binary, socket)
    except proto.DaemonError as e:
        raise UserError("Could not start the neural-style daemon: %s. If the weights are missing, run "
                        "`neural-style weights fetch`." % e.message)


def stylize(procedure, image, drawables, config, stop_button=None):
    layers = [d for d in drawables]
    if not layers:
        raise UserError("Select the content layer (and style layers) first.")
    for d in layers:
        check_drawable(d, "content or style")
    # bottom of the stack first
    layers.sort(key=lambda l: image.get_item_position(l), reverse=True)
    index = config.get_property("content-index")
    if index >= len(layers):
        raise UserError("Content layer %d does not exist: %d layer(s) are selected." % (index, len(layers)))
    content = layers[index]
    style_layers = [l for i, l in enumerate(layers) if i != index]
    style_file = config.get_property("style-file")
    if not style_layers and style_file is None:
        raise UserError("Select two or more layers (content + styles), or choose a style image file.")

    hp = high_precision(image)
    payload = bytearray()

    def add(data, fmt, w=None, h=None):
        ref = proto.image_ref(len(payload), data, fmt, w, h)
        payload.extend(data)
        return ref

    cw, ch, fmt, data = read_pixels(content, hp)
    content_ref = add(data, fmt, cw, ch)
    styles = []
    for l in style_layers:
        w, h, fmt, data = read_pixels(l, hp)
        styles.append({"image": add(data, fmt, w, h)})
    if not style_layers:
        path = style_file.get_path()
        try:
            with open(path, "rb") as f:
                styles.append({"image": add(f.read(), "encoded")})
        except OSError as e:
            raise UserError("Cannot read the style file %s: %s" % (path, e))
    weights_text = (config.get_property("style-weights") or "").strip()
    if weights_text:
        try:
            weights = [float(x) for x in weights_text.split(",")]
        except ValueError:
            raise UserError("Style weights must be numbers separated by commas, e.g. 1,0.5")
        if len(weights) != len(styles):
            raise UserError("%d style weights for %d style(s)." % (len(weights), len(styles)))
        for s, w in zip(styles, weights):
            s["weight"] = w

    max_size = config.get_property("max-size")
    size = max_size if max_size and max(cw, ch) > max_size else None
    params = {
        "size": size,
        "iterations": config.get_property("iterations"),
        "strength": config.get_property("strength"),
        "init": config.get_property("init"),
        "seed": config.get_property("seed"),
        "preserve_colors": config.get_property("preserve-colors"),
        "pooling": config.get_property("pooling"),
    }
    # previews at the size the layer shows (the output's, at most 1024 px), every PREVIEW_EVERY_S
    shown = min(max(cw, ch), size or max(cw, ch), MAX_PREVIEW)
    request = {"content": content_ref, "styles": styles, "params": params,
               "output": "rgba32f" if hp else "rgba8", "priority": "interactive",
               "label": "%s: %s" % (image.get_name() or "GIMP", content.get_name()),
               "preview_every_s": PREVIEW_EVERY_S, "preview_size": max(16, shown)}

    Gimp.progress_init("Neural Style")
    conn = connect(config, Gimp.progress_set_text)
    if not conn.server.get("pretrained", True):
        Gimp.message("neural-style: the daemon runs with NOT PRETRAINED weights (random init), so the result "
                     "will not look like the style. Run `neural-style weights fetch` and restart the daemon.")
    live = LiveLayer(image, content, hp)
    stop = Stop(config.get_property("stop-after"), stop_button)

    def on_event(header, data):
        t = header["type"]
        if t in ("accepted", "queued") and header.get("position", 0) > 0:
            Gimp.progress_set_text("Neural Style: waiting, %d job(s) ahead" % header["position"])
        elif t == "started":
            live.start()
            stop.started()
        elif t == "progress":
            Gimp.progress_set_text(progress_text(header))
            Gimp.progress_update(header["iteration"] / max(1, header["total"]))
            if header.get("preview") and live.layer is not None:
                p = header["preview"]
                live.show(proto.slice_image(p, data), p["width"], p["height"], "R'G'B'A u8")

    keep = config.get_property("on-cancel") == "keep"
    try:
        try:
            header, data = conn.stylize(request, bytes(payload), on_event, should_cancel=stop.requested,
                                        idle=stop.idle)
        except proto.DaemonError as e:
            hint = " Lower the output size limit." if e.code in ("too_large", "out_of_memory") else ""
            raise UserError("neural-style: %s%s" % (e.message, hint))
        except (proto.ProtocolError, OSError) as e:
            raise UserError("neural-style: lost the connection to the daemon: %s" % e)
        finally:
            conn.close()
            stop.close()
        Gimp.progress_end()
        if header["type"] == "cancelled" and not keep:
            live.discard()
            return None
        ref = header["image"]
        live.finish(proto.slice_image(ref, data), ref["width"], ref["height"], header.get("summary") or {})
    except BaseException:
        # no half-made layer: whatever went wrong, the image is as it was
        live.discard()
        raise
    finally:
        live.close()
    Gimp.displays_flush()
    return live.layer


def progress_text(header):
    """"Neural Style: 120/300 evaluations at 256×192, 12 s left"."""
    at = " at %d×%d" % tuple(header["scale"]) if header.get("scale") else ""
    return "Neural Style: %d/%d evaluations%s, %.0f s left" % (header["iteration"], header["total"], at,
                                                              header.get("eta", 0))


class LiveLayer:
    """The new layer above the content: made when the job starts, updated in place from each
    preview and finally from the result, all inside one undo group (one undo step)."""

    def __init__(self, image, content, hp):
        self.image, self.content, self.hp = image, content, hp
        self.layer = None
        self.grouped = False
        self.previews = 0

    def start(self):
        if self.layer is not None:
            return
        image, content = self.image, self.content
        image.undo_group_start()
        self.grouped = True
        w, h = content.get_width(), content.get_height()
        self.layer = Gimp.Layer.new(image, "%s (Neural Style)" % content.get_name(), w, h,
                                    content.type_with_alpha(), 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(self.layer, content.get_parent(), image.get_item_position(content))
        _, x, y = content.get_offsets()
        self.layer.set_offsets(x, y)
        Gimp.displays_flush()

    def show(self, pixels, w, h, fmt):
        """Puts w × h pixels into the layer, scaled to its size when they differ (no undo step)."""
        layer = self.layer
        lw, lh = layer.get_width(), layer.get_height()
        buf = layer.get_buffer()
        if (w, h) == (lw, lh):
            buf.set(Gegl.Rectangle.new(0, 0, w, h), fmt, pixels)
        else:
            buf.set(Gegl.Rectangle.new(0, 0, lw, lh), fmt, scaled(pixels, w, h, lw, lh, fmt))
        buf.flush()
        layer.update(0, 0, lw, lh)
        Gimp.displays_flush()
        self.previews += 1

    def finish(self, pixels, rw, rh, summary):
        """The result (the job's output size) into the layer at the content's size and place, with
        what made it in the layer's "neural-style" parasite (JSON: evaluations, stop reason,
        schedule, weights, previews shown)."""
        self.start()
        layer, content = self.layer, self.content
        cw, ch = content.get_width(), content.get_height()
        fmt = "R'G'B'A float" if self.hp else "R'G'B'A u8"
        if (rw, rh) != (cw, ch):
            # the output is smaller than the layer (size limit): GIMP's own scaling, as before
            layer.resize(rw, rh, 0, 0)
            buf = layer.get_buffer()
            buf.set(Gegl.Rectangle.new(0, 0, rw, rh), fmt, pixels)
            buf.flush()
            layer.scale(cw, ch, False)
            _, x, y = content.get_offsets()
            layer.set_offsets(x, y)
        else:
            buf = layer.get_buffer()
            buf.set(Gegl.Rectangle.new(0, 0, rw, rh), fmt, pixels)
            buf.flush()
        if not Gimp.Selection.is_empty(self.image):
            layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
        keys = ("evaluations", "seconds", "stop_reason", "schedule", "total_loss", "precision", "pretrained", "device")
        info = {k: summary[k] for k in keys if k in summary}
        info["previews"] = self.previews
        data = json.dumps(info, sort_keys=True).encode()
        layer.attach_parasite(Gimp.Parasite.new(PARASITE, Gimp.PARASITE_PERSISTENT, list(data)))
        layer.update(0, 0, cw, ch)

    def discard(self):
        if self.layer is not None:
            self.image.remove_layer(self.layer)
            self.layer = None

    def close(self):
        if self.grouped:
            self.image.undo_group_end()
            self.grouped = False


def scaled(pixels, w, h, to_w, to_h, fmt):
    """w × h RGBA pixels scaled to to_w × to_h by GIMP itself, in a scratch image without undo."""
    scratch = Gimp.Image.new(w, h, Gimp.ImageBaseType.RGB)
    try:
        scratch.undo_disable()
        layer = Gimp.Layer.new(scratch, "preview", w, h, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        scratch.insert_layer(layer, None, 0)
        buf = layer.get_buffer()
        buf.set(Gegl.Rectangle.new(0, 0, w, h), fmt, pixels)
        buf.flush()
        layer.scale(to_w, to_h, False)
        rect = Gegl.Rectangle.new(0, 0, to_w, to_h)
        return bytes(layer.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.NONE))
    finally:
        scratch.delete()


class Stop:
    """When to stop the job and take its current image: after `after` seconds of running (the
    "Stop after" setting, 0 = never), or when the Stop button of the interactive progress
    window is pressed. GIMP's own Cancel on its progress bar ends the plug-in at once (GIMP closes
    a plug-in whose progress is cancelled): the daemon then cancels the job, and the layer keeps
    the last preview it showed."""

    def __init__(self, after, button):
        self.after, self.button = after, button
        self.since = None

    def started(self):
        import time
        self.since = time.monotonic()

    def requested(self):
        import time
        if self.button is not None and self.button.pressed:
            return True
        return self.since is not None and self.after > 0 and time.monotonic() - self.since >= self.after

    def idle(self):
        if self.button is not None:
            self.button.pump()

    def close(self):
        if self.button is not None:
            self.button.close()


class StopButton:
    """A small window with a Stop button beside GIMP's progress bar (interactive runs): GIMP's own
    Cancel cannot be watched from a plug-in, so this is where "On cancel" applies."""

    def __init__(self):
        gi.require_version("Gtk", "3.0")
        from gi.repository import Gtk
        self.Gtk = Gtk
        self.pressed = False
        self.window = Gtk.Window(title="Neural Style")
        self.window.set_keep_above(True)
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=6, margin=12)
        box.pack_start(Gtk.Label(label="Stylizing… the new layer shows the image as it forms."), False, False, 0)
        button = Gtk.Button(label="_Stop and keep / discard (see On cancel)", use_underline=True)
        button.connect("clicked", self._clicked)
        box.pack_start(button, False, False, 0)
        self.window.add(box)
        self.window.connect("delete-event", lambda *_: self._clicked() or True)
        self.window.show_all()
        self.pump()

    def _clicked(self, *_):
        self.pressed = True

    def pump(self):
        while self.Gtk.events_pending():
            self.Gtk.main_iteration_do(False)

    def close(self):
        self.window.destroy()
        self.pump()


class NeuralStyle(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROC]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        proc = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, self.run, None)
        proc.set_image_types("RGB*, GRAY*")
        proc.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE | Gimp.ProcedureSensitivityMask.DRAWABLES)
        proc.set_menu_label("Neural _Style…")
        proc.add_menu_path("<Image>/Filters")
        proc.set_documentation(
            "Neural style transfer (Gatys et al.) with the neural-style daemon",
            "Select the content layer and one or more style layers (or one layer and a style file); "
            "the stylized image is added as a new layer above the content layer.", name)
        proc.set_attribution("neural-style contributors", "neural-style contributors", "2026")
        proc.add_double_argument("strength", "_Strength", "Style strength (size-independent)",
                                 0.0, 1000.0, 1.0, FLAGS)
        proc.add_int_argument("iterations", "_Quality (iterations)", "Objective evaluations",
                              1, 10000, 300, FLAGS)
        proc.add_int_argument("max-size", "Output size _limit", "Longest side in pixels (0: the layer's size)",
                              0, 16384, 1024, FLAGS)
        proc.add_choice_argument("init", "_Start from", "Starting image",
                                 choice(("content", "Content"), ("noise", "White noise"), ("style", "Style")),
                                 "content", FLAGS)
        proc.add_int_argument("seed", "S_eed", "Seed of the noise start", 0, 2147483647, 0, FLAGS)
        proc.add_boolean_argument("preserve-colors", "_Preserve colours", "Keep the content's colours",
                                  False, FLAGS)
        proc.add_choice_argument("pooling", "Poo_ling", "Pooling in VGG19",
                                 choice(("avg", "Average (paper)"), ("max", "Max")), "avg", FLAGS)
        proc.add_int_argument("content-index", "_Content layer",
                              "Which selected layer is the content, counting from the bottom (0)", 0, 64, 0, FLAGS)
        proc.add_string_argument("style-weights", "Style _weights",
                                 "Blend weights of the styles, comma-separated (empty: equal)", "", FLAGS)
        proc.add_file_argument("style-file", "Style _file", "Style image when one layer is selected",
                               Gimp.FileChooserAction.OPEN, True, None, FLAGS)
        proc.add_choice_argument("on-cancel", "On _cancel", "What Stop leaves: the image as it is now, or nothing",
                                 choice(("keep", "Keep the current image"), ("discard", "Discard")), "keep", FLAGS)
        proc.add_double_argument("stop-after", "Stop _after (s)",
                                 "Stop the job after this many seconds of running, as Stop would (0: never)",
                                 0.0, 86400.0, 0.0, FLAGS)
        proc.add_string_argument("socket", "Daemon socket", "Empty: NEURAL_STYLE_SOCKET or the default", "", FLAGS)
        proc.add_string_argument("daemon-binary", "neural-style binary",
                                 "Used to start the daemon when none runs (empty: search)", "", FLAGS)
        proc.add_layer_return_value("layer", "Stylized layer", "The new layer", True, FLAGS)
        return proc

    def run(self, procedure, run_mode, image, drawables, config, data):
        if run_mode == Gimp.RunMode.INTERACTIVE:
            gi.require_version("GimpUi", "3.0")
            from gi.repository import GimpUi
            GimpUi.init(PROC)
            dialog = GimpUi.ProcedureDialog.new(procedure, config, "Neural Style")
            dialog.fill(None)
            ok = dialog.run()
            dialog.destroy()
            if not ok:
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        button = StopButton() if run_mode == Gimp.RunMode.INTERACTIVE else None
        try:
            layer = stylize(procedure, image, drawables, config, button)
        except UserError as e:
            Gimp.progress_end()
            err = GLib.Error.new_literal(Gimp.PlugIn.error_quark(), str(e), 0)
            return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, err)
        if layer is None:
            # stopped, and "On cancel" said discard
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        values = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
        values.remove(1)
        values.insert(1, GObject.Value(Gimp.Layer, layer))
        return values


Gimp.main(NeuralStyle.__gtype__, sys.argv)
