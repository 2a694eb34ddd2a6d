"""The page's own JavaScript and CSS, for A1111 users' habits (its ``script.js``, ``edit-attention.js``,
``edit-order.js`` and ``hints.js``, written anew):

- Keys, as A1111 1.10: Ctrl+Enter (or Cmd+Enter) anywhere on a tab with a Generate button (txt2img, img2img,
  Extras) clicks it; while that tab's generation runs it interrupts it and generates again once it has stopped.
  Alt+Enter clicks the tab's Skip; Esc interrupts the running generation (not while a popup is open, nor when a
  component has used the key). In the prompt boxes, Ctrl+Up / Ctrl+Down change the attention weight of the selection
  or of the word, ``(a b:1.3)`` block or ``<lora:x:0.8>`` tag under the cursor, and Alt+Left / Alt+Right move the
  comma-separated item under the cursor; the ``keyedit_*`` options are A1111's defaults (``window.opts`` wins where
  an extension ported from A1111 sets it).
- Tooltips: every icon button gets A1111's ``title`` (by element id, else by its symbol, as ``hints.js``), an
  ``aria-label`` and a short text; A1111's hints for labels and buttons by their text too. A MutationObserver
  applies them to elements Gradio adds later (tabs are rendered when first opened).
- Without an emoji font: icon buttons ask for the emoji fonts by name first (``font-family``), so any installed one
  is used; then each symbol is drawn on a canvas and compared with a code point no font has (U+10FFFD). When the
  symbol comes out as that same "missing glyph" box (or blank), the button gets ``data-sd-icon-missing`` and CSS
  shows its short text (``data-sd-icon-text``, e.g. "Clear") instead of the box. The title and aria-label are there
  in every case, so a button is never only a box.
- Narrow screens (phones, 390 px): a media query stacks the columns, lets the quicksettings wrap, makes wide tables
  and code scroll inside themselves, so the page never scrolls sideways.

The script runs once, from ``js_on_load`` of the page's style component (see :func:`webui.ui.build_ui`)."""

from __future__ import annotations

import json
from typing import Any

from webui.ui.page_js import CORE_JS, PAGE_JS_TEMPLATE

GENERATION_TABS = ("txt2img", "img2img")

# A1111's defaults of its "keyedit" options (modules/shared_options.py)
KEYEDIT_DEFAULTS: dict[str, Any] = {
    "keyedit_precision_attention": 0.1,
    "keyedit_precision_extra": 0.05,
    "keyedit_delimiters": r".,\/!?%^*;:{}=`~() ",
    "keyedit_delimiters_whitespace": ["Tab", "Carriage Return", "Line Feed"],
    "keyedit_move": True,
}

PASTE_TITLE = "Read generation parameters from prompt or last generation if prompt is empty into user interface."
RANDOM_TITLE = "Set seed to -1, which will cause a new random number to be used every time"
REUSE_TITLE = "Reuse seed from last generation, mostly useful if it was randomized"


def _icon(title: str, name: str, text: str) -> dict[str, str]:
    """``title``: the tooltip; ``name``: the aria-label; ``text``: shown when the symbol cannot be drawn."""
    return {"title": title, "name": name, "text": text}


# By symbol (variation selector U+FE0F removed), as A1111's hints.js and ToolButton tooltips.
SYMBOL_ICONS: dict[str, dict[str, str]] = {
    "\u2199": _icon(PASTE_TITLE, "Read generation parameters", "Read"),  # ↙️
    "\U0001f3b2": _icon(RANDOM_TITLE, "Random seed", "Random"),  # 🎲️
    "\u267b": _icon(REUSE_TITLE, "Reuse seed", "Reuse"),  # ♻️
    "\U0001f5d1": _icon("Clear prompt", "Clear prompt", "Clear"),  # 🗑️
    "\U0001f3b4": _icon("Show/hide extra networks", "Show/hide extra networks", "Networks"),  # 🎴
    "\U0001f504": _icon("Refresh", "Refresh", "Refresh"),  # 🔄
    "\U0001f58c": _icon("Edit styles", "Edit styles", "Styles"),  # 🖌️
    "\U0001f4cb": _icon("Apply selected styles to current prompt", "Apply styles", "Apply"),  # 📋
    "\U0001f4dd": _icon("Copy main UI prompt to style.", "Copy prompt to style", "Copy"),  # 📝
    "\U0001f4be": _icon("Save style", "Save", "Save"),  # 💾
    "\u21c5": _icon("Switch width/height", "Switch width/height", "Swap"),  # ⇅
    "\U0001f4c2": _icon("Open images output directory", "Open images output directory", "Folder"),  # 📂
    "\U0001f5c3": _icon("Save zip archive with images to a dedicated directory", "Save zip", "Zip"),  # 🗃️
    "\U0001f5bc": _icon("Send image and generation parameters to img2img tab.", "Send to img2img", "img2img"),  # 🖼️
    "\U0001f3a8": _icon("Send image and generation parameters to img2img inpaint tab.", "Send to inpaint",
                        "Inpaint"),  # 🎨️
    "\U0001f4d0": _icon("Auto detect size from img2img", "Auto detect size", "Detect"),  # 📐
    "\U0001f4d2": _icon("Paste available values into the field", "Paste values", "Paste"),  # 📒
    "\U0001f300": _icon("Restore progress", "Restore progress", "Restore"),  # 🌀
    "\U0001f4ce": _icon("Interrogate CLIP - use CLIP neural network to create a text describing the image, and put "
                        "it into the prompt field", "Interrogate CLIP", "CLIP"),  # 📎
    "\U0001f4e6": _icon("Interrogate DeepBooru - use DeepBooru neural network to create a text describing the image, "
                        "and put it into the prompt field", "Interrogate DeepBooru", "DeepBooru"),  # 📦
    "\U0001f6e0": _icon("Edit metadata", "Edit metadata", "Edit"),  # 🛠️
    "\u21ba": _icon("Reset to default value", "Reset to default value", "Reset"),  # ↺ gradio's sliders
}


def _refresh(label: str) -> dict[str, str]:
    """A1111's refresh buttons: "{label of the refreshed component}: refresh"."""
    return _icon(f"{label}: refresh", f"Refresh {label}", "Refresh")


def _tab_icons(tab: str) -> dict[str, dict[str, str]]:
    s = SYMBOL_ICONS
    icons = {
        f"{tab}_clear_prompt": s["\U0001f5d1"],
        f"{tab}_extra_networks": s["\U0001f3b4"],
        f"{tab}_styles_refresh": _refresh("Styles"),
        f"{tab}_styles_edit_button": s["\U0001f58c"],
        f"refresh_{tab}_styles": _refresh("Styles"),
        f"{tab}_style_apply_dialog": _icon("Apply all selected styles from the style selection dropdown in main UI "
                                           "to the prompt.", "Apply styles", "Apply"),
        f"{tab}_style_copy": s["\U0001f4dd"],
        f"{tab}_extra_refresh": _icon("Refresh", "Refresh extra networks", "Refresh"),
        f"{tab}_res_switch_btn": s["\u21c5"],
        f"{tab}_random_seed": s["\U0001f3b2"],
        f"{tab}_reuse_seed": s["\u267b"],
        f"{tab}_random_subseed": _icon(RANDOM_TITLE, "Random variation seed", "Random"),
        f"{tab}_reuse_subseed": _icon(REUSE_TITLE, "Reuse variation seed", "Reuse"),
        f"{tab}_open_folder": _icon("Open images output directory.", "Open images output directory", "Folder"),
        f"save_{tab}": _icon("Save the image to a dedicated directory.", "Save", "Save"),
        f"save_zip_{tab}": s["\U0001f5c3"],
        f"{tab}_send_to_img2img": s["\U0001f5bc"],
        f"{tab}_send_to_inpaint": s["\U0001f3a8"],
        f"{tab}_send_to_extras": _icon("Send image and generation parameters to extras tab.", "Send to extras",
                                       "Extras"),
        # buttons with words: A1111 1.10's tooltips
        f"{tab}_interrupt": _icon("End generation immediately or after completing current batch", "Interrupt",
                                  "Interrupt"),
        f"{tab}_skip": _icon("Stop generation of current batch and continues onto next batch", "Skip", "Skip"),
        # "Save" buttons that are not hints.js's "Save" (an image)
        f"{tab}_edit_style_save": _icon("Save the prompts as the style chosen above", "Save style", "Save"),
        f"{tab}_edit_user_metadata_save": _icon("Save the metadata", "Save metadata", "Save"),
    }
    return icons


# By element id: these win over the symbol's (the same symbol may do different things).
ID_ICONS: dict[str, dict[str, str]] = {
    "paste": SYMBOL_ICONS["\u2199"],
    "img2img_paste": SYMBOL_ICONS["\u2199"],
    **_tab_icons("txt2img"),
    **_tab_icons("img2img"),
    "refresh_sd_model_checkpoint": _refresh("Stable Diffusion checkpoint"),
    "refresh_checkpoint_A": _refresh("Primary model (A)"),
    "refresh_checkpoint_B": _refresh("Secondary model (B)"),
    "refresh_checkpoint_C": _refresh("Tertiary model (C)"),
    "modelmerger_refresh_bake_in_vae": _refresh("Bake in VAE"),
    "extras_upscalers_refresh": _refresh("Upscalers"),
    "train_refresh_embedding_names": _refresh("Embedding"),
    "train_refresh_template_file": _refresh("Prompt template"),
    "interrogate": SYMBOL_ICONS["\U0001f4ce"],
    "deepbooru": SYMBOL_ICONS["\U0001f4e6"],
}

# A1111's hints.js: tooltips by an element's text (labels, buttons, dropdown items).
HINTS: dict[str, str] = {
    "Sampling steps": "How many times to improve the generated image iteratively; higher values take longer; very "
                      "low values can produce bad results",
    "Sampling method": "Which algorithm to use to produce the image",
    "GFPGAN": "Restore low quality faces using GFPGAN neural network",
    "Euler a": "Euler Ancestral - very creative, each can get a completely different picture depending on step count, "
               "setting steps higher than 30-40 does not help",
    "DDIM": "Denoising Diffusion Implicit Models - best at inpainting",
    "UniPC": "Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models",
    "DPM adaptive": "Ignores step count - uses a number of steps determined by the CFG and resolution",
    "Batch count": "How many batches of images to create (has no impact on generation performance or VRAM usage)",
    "Batch size": "How many image to create in a single batch (increases generation performance at cost of higher "
                  "VRAM usage)",
    "CFG Scale": "Classifier Free Guidance Scale - how strongly the image should conform to prompt - lower values "
                 "produce more creative results",
    "Seed": "A value that determines the output of random number generator - if you create an image with same "
            "parameters and seed as another image, you'll get the same result",
    "Inpaint a part of image": "Draw a mask over an image, and the script will regenerate the masked area with "
                               "content according to prompt",
    "SD upscale": "Upscale image normally, split result into tiles, improve each tile using img2img, merge whole "
                  "image back",
    "Just resize": "Resize image to target resolution. Unless height and width match, you will get incorrect aspect "
                   "ratio.",
    "Crop and resize": "Resize the image so that entirety of target resolution is filled with the image. Crop parts "
                       "that stick out.",
    "Resize and fill": "Resize the image so that entirety of image is inside target resolution. Fill empty space "
                       "with image's colors.",
    "Mask blur": "How much to blur the mask before processing, in pixels.",
    "Masked content": "What to put inside the masked area before processing it with Stable Diffusion.",
    "fill": "fill it with colors of the image",
    "original": "keep whatever was there originally",
    "latent noise": "fill it with latent space noise",
    "latent nothing": "fill it with latent space zeroes",
    "Inpaint at full resolution": "Upscale masked region to target resolution, do inpainting, downscale back and "
                                  "paste into original image",
    "Denoising strength": "Determines how little respect the algorithm should have for image's content. At 0, "
                          "nothing will change, and at 1 you'll get an unrelated image. With values below 1.0, "
                          "processing will take less steps than the Sampling Steps slider specifies.",
    "Skip": "Stop processing current image and continue processing.",
    "Interrupt": "Stop processing images and return any results accumulated so far.",
    "Save": "Write image to a directory (default - log/images) and generation parameters into csv file.",
    "X values": "Separate values for X axis using commas.",
    "Y values": "Separate values for Y axis using commas.",
    "None": "Do not do anything special",
    "Prompt matrix": "Separate prompts into parts using vertical pipe character (|) and the script will create a "
                     "picture for every combination of them (except for the first part, which will be present in "
                     "all combinations)",
    "X/Y/Z plot": "Create grid(s) where images will have different parameters. Use inputs below to specify which "
                  "parameters will be shared by columns and rows",
    "Custom code": "Run Python code. Advanced user only. Must run program with --allow-code for this to work",
    "Prompt S/R": "Separate a list of words with commas, and the first word will be used as a keyword: script will "
                  "search for this word in the prompt, and replace it with others",
    "Prompt order": "Separate a list of words with commas, and the script will make a variation of prompt with those "
                    "words for their every possible order",
    "Tiling": "Produce an image that can be tiled.",
    "Tile overlap": "For SD upscale, how much overlap in pixels should there be between tiles. Tiles overlap so that "
                    "when they are merged back into one picture, there is no clearly visible seam.",
    "Variation seed": "Seed of a different picture to be mixed into the generation.",
    "Variation strength": "How strong of a variation to produce. At 0, there will be no effect. At 1, you will get "
                          "the complete picture with variation seed (except for ancestral samplers, where you will "
                          "just get something).",
    "Resize seed from height": "Make an attempt to produce a picture similar to what would have been produced with "
                               "same seed at specified resolution",
    "Resize seed from width": "Make an attempt to produce a picture similar to what would have been produced with "
                              "same seed at specified resolution",
    "Interrogate": "Reconstruct prompt from existing image and put it into the prompt field.",
    "Images filename pattern": "Use tags like [seed] and [date] to define how filenames for images are chosen. Leave "
                               "empty for default.",
    "Directory name pattern": "Use tags like [seed] and [date] to define how subdirectories for images and grids are "
                              "chosen. Leave empty for default.",
    "Max prompt words": "Set the maximum number of words to be used in the [prompt_words] option; ATTENTION: If the "
                        "words are too long, they may exceed the maximum length of the file path that the system "
                        "can handle",
    "Loopback": "Performs img2img processing multiple times. Output images are used as input for the next loop.",
    "Loops": "How many times to process an image. Each output is used as the input of the next loop. If set to 1, "
             "behavior will be as if this script were not used.",
    "Final denoising strength": "The denoising strength for the final loop of each image in the batch.",
    "Denoising strength curve": "The denoising curve controls the rate of denoising strength change each loop. "
                                "Aggressive: Most of the change will happen towards the start of the loops. Linear: "
                                "Change will be constant through all loops. Lazy: Most of the change will happen "
                                "towards the end of the loops.",
    "Style 1": "Style to apply; styles have components for both positive and negative prompts and apply to both",
    "Style 2": "Style to apply; styles have components for both positive and negative prompts and apply to both",
    "Apply style": "Insert selected styles into prompt fields",
    "Create style": "Save current prompts as a style. If you add the token {prompt} to the text, the style uses "
                    "that as a placeholder for your prompt when you use the style in the future.",
    "Checkpoint name": "Loads weights from checkpoint before making images. You can either use hash or a part of "
                       "filename (as seen in settings) for checkpoint name. Recommended to use with Y axis for less "
                       "switching.",
    "Inpainting conditioning mask strength": "Only applies to inpainting models. Determines how strongly to mask off "
                                             "the original image for inpainting and img2img. 1.0 means fully masked, "
                                             "which is the default behaviour. 0.0 means a fully unmasked "
                                             "conditioning. Lower values will help preserve the overall composition "
                                             "of the image, but will struggle with large changes.",
    "Eta noise seed delta": "If this values is non-zero, it will be added to seed and used to initialize RNG for "
                            "noises when using samplers with Eta. You can use this to produce even more variation of "
                            "images, or you can use this to match images of other software if you know what you are "
                            "doing.",
    "Filename word regex": "This regular expression will be used extract words from filename, and they will be "
                           "joined using the option below into label text used for training. Leave empty to keep "
                           "filename text as it is.",
    "Filename join string": "This string will be used to join split words into a single line if the option above "
                            "is enabled.",
    "Quicksettings list": "List of setting names, separated by commas, for settings that should go to the quick "
                          "access bar at the top, rather than the usual setting tab. See modules/shared.py for "
                          "setting names. Requires restarting to apply.",
    "Weighted sum": "Result = A * (1 - M) + B * M",
    "Add difference": "Result = A + (B - C) * M",
    "No interpolation": "Result = A",
    "Initialization text": "If the number of tokens is more than the number of vectors, some may be skipped.\n"
                           "Leave the textbox empty to start with zeroed out vectors",
    "Learning rate": "How fast should training go. Low values will take longer to train, high values may fail to "
                     "converge (not generate accurate results) and/or may break the embedding (This has happened if "
                     "you see Loss: nan in the training info textbox. If this happens, you need to manually restore "
                     "your embedding from an older not-broken backup).\n\nYou can set a single numeric value, or "
                     "multiple learning rates using the syntax:\n\n   rate_1:max_steps_1, rate_2:max_steps_2, ...\n\n"
                     "EG:   0.005:100, 1e-3:1000, 1e-5\n\nWill train with rate of 0.005 for first 100 steps, then "
                     "1e-3 until 1000 steps, then 1e-5 for all remaining steps.",
    "Clip skip": "Early stopping parameter for CLIP model; 1 is stop at last layer as usual, 2 is stop at "
                 "penultimate layer, etc.",
    "Approx NN": "Cheap neural network approximation. Very fast compared to VAE, but produces pictures with 4 times "
                 "smaller horizontal/vertical resolution and lower quality.",
    "Approx cheap": "Very cheap approximation. Very fast compared to VAE, but produces pictures with 8 times smaller "
                    "horizontal/vertical resolution and extremely low quality.",
    "Hires. fix": "Use a two step process to partially create an image at smaller resolution, upscale, and then "
                  "improve details in it without changing composition",
    "Hires steps": "Number of sampling steps for upscaled picture. If 0, uses same as for original.",
    "Upscale by": "Adjusts the size of the image by multiplying the original width and height by the selected value. "
                  "Ignored if either Resize width to or Resize height to are non-zero.",
    "Resize width to": "Resizes image to this width. If 0, width is inferred from either of two nearby sliders.",
    "Resize height to": "Resizes image to this height. If 0, height is inferred from either of two nearby sliders.",
    "Discard weights with matching name": "Regular expression; if weights's name matches it, the weights is not "
                                          "written to the resulting checkpoint. Use ^model_ema to discard EMA "
                                          "weights.",
    "Extra networks tab order": "Comma-separated list of tab names; tabs listed here will appear in the extra "
                                "networks UI first and in order listed.",
    "Negative Guidance minimum sigma": "Skip negative prompt for steps where image is already mostly denoised; the "
                                       "higher this value, the more skips there will be; provides increased "
                                       "performance in exchange for minor quality reduction.",
}


def symbol_key(text: str) -> str:
    """A button's text as the symbol tables key it: variation selectors and spaces removed."""
    return text.replace("\ufe0f", "").strip()


def is_icon_text(text: str) -> bool:
    """Whether a button's text is a symbol only (no letter or digit): an icon button."""
    key = symbol_key(text)
    units = len(key.encode("utf-16-le")) // 2  # as JavaScript counts a string's length
    return 0 < units <= 2 and not any(ch.isalnum() for ch in key)


def humanize(elem_id: str) -> str:
    """A plain title from an element id: ``train_refresh_template_file`` -> "Train refresh template file"."""
    words = " ".join(w for w in elem_id.replace("-", "_").split("_") if w)
    return words[:1].upper() + words[1:]


def icon_for(elem_id: str | None, text: str, tool: bool = True) -> dict[str, str] | None:
    """What the page script gives a button (as its ``iconInfo``): by id, else by symbol, else (for the UI's own tool
    buttons, ``tool``) a plain title made from the id. (The script also makes one from an icon button's own
    ``aria-label``, as gradio's buttons have.)"""
    if elem_id and elem_id in ID_ICONS:
        return ID_ICONS[elem_id]
    if symbol_key(text) in SYMBOL_ICONS:
        return SYMBOL_ICONS[symbol_key(text)]
    if not tool:
        return None
    words = humanize(elem_id or "") or "Button"
    return _icon(words, words, words.split(" ")[0])


def page_config() -> dict[str, Any]:
    return {"ids": ID_ICONS, "symbols": SYMBOL_ICONS, "hints": HINTS, "keyedit": KEYEDIT_DEFAULTS}


PAGE_JS = PAGE_JS_TEMPLATE.replace("__CONFIG__", json.dumps(page_config(), ensure_ascii=True)).replace(
    "__CORE__", CORE_JS)

# The emoji fonts of the systems, by name, before the page's font: a symbol is drawn from whichever is installed.
EMOJI_FONTS = ('"Apple Color Emoji", "Segoe UI Emoji", "Noto Color Emoji", "Twemoji Mozilla", "EmojiOne Color", '
               '"Android Emoji", "Segoe UI Symbol", "Noto Emoji", "Symbola"')

PAGE_CSS = """
button.sd-tool, button[data-sd-icon-text] { font-family: __EMOJI__, var(--font, ui-sans-serif), sans-serif; }
/* a symbol no font can draw: its short text instead of a box */
button.sd-tool[data-sd-icon-missing], button[data-sd-icon-missing] {
    font-size: 0 !important; line-height: 0 !important; width: auto !important; max-width: none !important;
    min-width: 2.5rem !important; min-height: 1.85rem !important; padding: 0.2rem 0.4rem !important;
    flex: 0 0 auto !important; }
button[data-sd-icon-missing]::after { content: attr(data-sd-icon-text); font-family: var(--font, ui-sans-serif),
    sans-serif; font-size: 0.72rem; font-weight: 600; line-height: 1.2; white-space: nowrap; }

/* narrow screens (phones): columns stacked, nothing wider than the screen */
@media (max-width: 640px) {
    .gradio-container { padding-left: 6px !important; padding-right: 6px !important; min-width: 0 !important;
                        max-width: 100% !important; }
    .gradio-container .row { flex-wrap: wrap !important; }
    .gradio-container .row > .column { flex: 1 1 100% !important; min-width: min(100%, 280px) !important; }
    #quicksettings { flex-wrap: wrap !important; }
    #sd_model_checkpoint_dropdown { min-width: min(24em, 100%) !important; max-width: 100% !important; }
    #txt2img_toprow > *, #img2img_toprow > * { flex: 1 1 100% !important; min-width: 0 !important; }
    #txt2img_generate, #img2img_generate { width: 100%; min-height: 3.5em; }
    .gradio-container table { display: block; max-width: 100%; overflow-x: auto; }
    .gradio-container pre, .gradio-container code { white-space: pre-wrap; overflow-wrap: anywhere; }
    .gradio-container img, .gradio-container video, .gradio-container canvas { max-width: 100%; }
    .sd-infotext, .sd-error, .sd-warning, .sd-info { overflow-wrap: anywhere; }
}
""".replace("__EMOJI__", EMOJI_FONTS)


def page_style_tag() -> str:
    """The page CSS as a ``<style>`` element (for a ``gr.HTML``, as :func:`webui.ui.common.style_tag`)."""
    return f"<style>{PAGE_CSS}</style>"
