"""The Extras tab's sections after the upscalers, as A1111's: GFPGAN and CodeFormer (each with its visibility),
then the training preparation (split oversized images, auto focal point crop, auto-sized crop, flipped copies,
caption), each a section with its own on/off box."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.training_prep import (
    AutosizedCropOptions,
    CaptionOptions,
    FlipOptions,
    FocalCropOptions,
    SplitOptions,
    TrainingPrepOptions,
)

SECTIONS = (("split", "Split oversized images"), ("focal_crop", "Auto focal point crop"),
            ("autosized_crop", "Auto-sized crop"), ("flip", "Create flipped copies"), ("caption", "Caption"))


def _section(f: dict[str, Any], key: str, label: str) -> gr.Accordion:
    accordion = gr.Accordion(label, open=False, elem_id=f"extras_{key}_section")
    with accordion:
        f[f"{key}_enable"] = gr.Checkbox(False, label=f"Enable {label.lower()}", elem_id=f"extras_{key}_enable")
    return accordion


def build_face_sections(f: dict[str, Any]) -> None:
    with _section(f, "gfpgan", "GFPGAN"):
        f["gfpgan_visibility"] = gr.Slider(0.0, 1.0, value=1.0, step=0.001, label="Visibility",
                                           elem_id="extras_gfpgan_visibility")
    with _section(f, "codeformer", "CodeFormer"):
        f["codeformer_visibility"] = gr.Slider(0.0, 1.0, value=1.0, step=0.001, label="Visibility",
                                               elem_id="extras_codeformer_visibility")
        f["codeformer_weight"] = gr.Slider(0.0, 1.0, value=0.0, step=0.001,
                                           label="Weight (0 = maximum effect, 1 = minimum effect)",
                                           elem_id="extras_codeformer_weight")


def build_training_sections(f: dict[str, Any]) -> None:
    with _section(f, "split", "Split oversized images"):
        f["split_threshold"] = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Threshold",
                                         elem_id="postprocess_split_threshold")
        f["overlap_ratio"] = gr.Slider(0.0, 0.9, value=0.2, step=0.05, label="Overlap ratio",
                                       elem_id="postprocess_overlap_ratio")
    with _section(f, "focal_crop", "Auto focal point crop"):
        for key, label, value in (("face_weight", "Focal point face weight", 0.9),
                                  ("entropy_weight", "Focal point entropy weight", 0.15),
                                  ("edges_weight", "Focal point edges weight", 0.5)):
            f[key] = gr.Slider(0.0, 1.0, value=value, step=0.05, label=label,
                               elem_id=f"postprocess_focal_crop_{key}")
        f["focal_debug"] = gr.Checkbox(False, label="Create debug image", elem_id="train_process_focal_crop_debug")
    with _section(f, "autosized_crop", "Auto-sized crop"):
        f["mindim"] = gr.Slider(64, 2048, value=384, step=8, label="Dimension lower bound",
                                elem_id="postprocess_multicrop_mindim")
        f["maxdim"] = gr.Slider(64, 2048, value=768, step=8, label="Dimension upper bound",
                                elem_id="postprocess_multicrop_maxdim")
        f["minarea"] = gr.Slider(64 * 64, 2048 * 2048, value=64 * 64, step=1, label="Area lower bound",
                                 elem_id="postprocess_multicrop_minarea")
        f["maxarea"] = gr.Slider(64 * 64, 2048 * 2048, value=640 * 640, step=1, label="Area upper bound",
                                 elem_id="postprocess_multicrop_maxarea")
        f["objective"] = gr.Radio(["Maximize area", "Minimize error"], value="Maximize area",
                                  label="Resizing objective", elem_id="postprocess_multicrop_objective")
        f["error_threshold"] = gr.Slider(0.0, 1.0, value=0.1, step=0.01, label="Error threshold",
                                         elem_id="postprocess_multicrop_threshold")
    with _section(f, "flip", "Create flipped copies"):
        f["flip_option"] = gr.CheckboxGroup(["Horizontal", "Vertical", "Both"], value=["Horizontal"],
                                            show_label=False, elem_id="postprocess_flip_option")
    with _section(f, "caption", "Caption"):
        f["caption_option"] = gr.CheckboxGroup(["Deepbooru", "BLIP"], value=["Deepbooru"], show_label=False,
                                               elem_id="postprocess_caption_option")


def face_values(v: dict[str, Any]) -> dict[str, float]:
    """The request's face fields from the form (a section switched off is visibility 0)."""
    return {"gfpgan_visibility": float(v["gfpgan_visibility"] or 0) if v.get("gfpgan_enable") else 0.0,
            "codeformer_visibility": float(v["codeformer_visibility"] or 0) if v.get("codeformer_enable") else 0.0,
            "codeformer_weight": float(v.get("codeformer_weight") or 0)}


def training_options(v: dict[str, Any], existing_caption_action: str) -> TrainingPrepOptions | None:
    """The training preparation the form asks for; None when every section is off."""
    if not any(v.get(f"{key}_enable") for key, _ in SECTIONS):
        return None
    return TrainingPrepOptions(
        split=SplitOptions(bool(v["split_enable"]), float(v["split_threshold"]), float(v["overlap_ratio"])),
        focal_crop=FocalCropOptions(bool(v["focal_crop_enable"]), float(v["face_weight"]),
                                    float(v["entropy_weight"]), float(v["edges_weight"]), bool(v["focal_debug"])),
        autosized_crop=AutosizedCropOptions(bool(v["autosized_crop_enable"]), int(v["mindim"]), int(v["maxdim"]),
                                            int(v["minarea"]), int(v["maxarea"]), str(v["objective"]),
                                            float(v["error_threshold"])),
        flip=FlipOptions(bool(v["flip_enable"]), tuple(v["flip_option"] or ())),
        caption=CaptionOptions(bool(v["caption_enable"]), tuple(v["caption_option"] or ())),
        existing_caption_action=existing_caption_action)
