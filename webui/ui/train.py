"""The Train tab, laid out as A1111's: "Create embedding", "Preprocess images" (now in Extras) and "Train", where
"Train" teaches either a textual-inversion embedding or a LoRA from a folder of images, as a queued job.

While it runs the tab shows the step, loss and ETA, the loss curve, the latest preview image and the files saved;
"Interrupt" stops it after the current step with its weights saved, and "Use in txt2img" puts the result's tag in
the txt2img prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules import samplers
from modules.app import App
from modules.training.specs import (
    CLIP_GRAD_MODES,
    LATENT_SAMPLING,
    LR_SCHEDULERS,
    MIXED_PRECISION,
    TEXT_TARGETS,
    UNET_TARGETS,
)
from webui.ui.common import REFRESH, tool_button
from webui.ui.train_handlers import (
    EMBEDDING,
    FIELDS,
    KIND_DEFAULTS,
    KINDS,
    TrainHandlers,
    TrainUpdate,
    default_values,
    loss_frame,
)

QUIET: dict[str, Any] = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}
PREPROCESS_NOTE = ("Preparing images for training (split oversized images, auto focal point crop, auto-sized crop, "
                   "flipped copies, captions) is in **Extras \u203a Batch from Directory**: choose the options in "
                   "its sections and point the output directory at your dataset folder.")
PREVIEW_TXT2IMG = ("prompt", "negative_prompt", "steps", "sampler_name", "cfg_scale", "seed", "width", "height")


@dataclass
class TrainUI:
    """The tab's components: the Train form's fields by name (in :data:`FIELDS` order) and its other parts."""

    handlers: TrainHandlers
    fields: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)

    def inputs(self) -> list[Any]:
        return [self.fields[name] for name in FIELDS]

    def outputs(self) -> list[Any]:
        return [self.parts[name] for name in TrainUpdate._fields]


def _create_embedding(ui: TrainUI) -> None:
    p = ui.parts
    p["new_embedding_name"] = gr.Textbox(label="Name", elem_id="train_new_embedding_name")
    p["initialization_text"] = gr.Textbox(label="Initialization text", value="*",
                                          elem_id="train_initialization_text")
    p["nvpt"] = gr.Slider(1, 75, value=1, step=1, label="Number of vectors per token", elem_id="train_nvpt")
    p["overwrite_old_embedding"] = gr.Checkbox(False, label="Overwrite Old Embedding",
                                               elem_id="train_overwrite_old_embedding")
    p["create_embedding"] = gr.Button("Create embedding", variant="primary", elem_id="train_create_embedding")
    p["create_info"] = gr.HTML(elem_id="train_create_embedding_info")


def _preprocess(ui: TrainUI) -> None:
    gr.Markdown(PREPROCESS_NOTE, elem_id="train_preprocess_note")
    with gr.Row():
        ui.parts["go_to_extras"] = gr.Button("Go to Extras", scale=0, min_width=160, elem_id="train_go_to_extras")


def _kind_fields(ui: TrainUI, d: dict[str, Any]) -> None:
    f, p = ui.fields, ui.parts
    f["train_kind"] = gr.Radio(list(KINDS), value=d["train_kind"], label="Train", elem_id="train_kind")
    with gr.Row(elem_id="train_embedding_group") as p["embedding_group"]:
        f["embedding_name"] = gr.Dropdown(ui.handlers.embedding_names(), value=None, label="Embedding",
                                          elem_id="train_embedding")
        p["refresh_embeddings"] = tool_button(REFRESH, "train_refresh_embedding_names")
    with gr.Group(visible=False, elem_id="train_lora_group") as p["lora_group"]:
        f["lora_name"] = gr.Textbox(d["lora_name"], label="LoRA name", elem_id="train_lora_name")
        with gr.Row():
            f["rank"] = gr.Number(d["rank"], label="Rank", precision=0, minimum=1, elem_id="train_lora_rank")
            f["alpha"] = gr.Number(d["alpha"], label="Alpha", minimum=0, elem_id="train_lora_alpha")
            f["train_unet"] = gr.Checkbox(d["train_unet"], label="Train UNet", elem_id="train_lora_train_unet")
            f["train_text_encoder"] = gr.Checkbox(d["train_text_encoder"], label="Train text encoder",
                                                  elem_id="train_lora_train_text_encoder")
        f["unet_targets"] = gr.CheckboxGroup(list(UNET_TARGETS), value=d["unet_targets"],
                                             label="UNet target modules", elem_id="train_lora_unet_targets")
        f["text_targets"] = gr.CheckboxGroup(list(TEXT_TARGETS), value=d["text_targets"],
                                             label="Text encoder target modules", elem_id="train_lora_text_targets")
        with gr.Row():
            blank = "blank: the learning rate below"
            f["unet_lr"] = gr.Textbox(d["unet_lr"], label="UNet learning rate", placeholder=blank,
                                      elem_id="train_lora_unet_lr")
            f["text_encoder_lr"] = gr.Textbox(d["text_encoder_lr"], label="Text encoder learning rate",
                                              placeholder=blank, elem_id="train_lora_text_encoder_lr")
        f["lora_overwrite"] = gr.Checkbox(d["lora_overwrite"], label="Overwrite an existing LoRA of the same name",
                                          elem_id="train_lora_overwrite")
        f["resume"] = gr.Textbox(d["resume"], label="Resume from", elem_id="train_lora_resume",
                                 placeholder="A LoRA saved by an earlier run: a name in the LoRA or log folder, "
                                             "or a path")


def _schedule_fields(ui: TrainUI, d: dict[str, Any]) -> None:
    f = ui.fields
    f["learn_rate"] = gr.Textbox(d["learn_rate"], label="Learning rate (embedding 0.005, LoRA 0.0001)",
                                 placeholder="0.005 or a schedule: 0.005:100, 1e-5:1000",
                                 elem_id="train_embedding_learn_rate")
    with gr.Row():
        f["lr_scheduler"] = gr.Dropdown(list(LR_SCHEDULERS), value=d["lr_scheduler"], label="LR scheduler",
                                        elem_id="train_lr_scheduler")
        f["lr_warmup_steps"] = gr.Number(d["lr_warmup_steps"], label="Warm-up steps", precision=0, minimum=0,
                                         elem_id="train_lr_warmup_steps")
    with gr.Row():
        f["clip_grad_mode"] = gr.Dropdown(list(CLIP_GRAD_MODES), value=d["clip_grad_mode"],
                                          label="Gradient Clipping", elem_id="train_clip_grad_mode")
        f["clip_grad_value"] = gr.Textbox(d["clip_grad_value"], label="Clipping value", show_label=False,
                                          visible=d["clip_grad_mode"] != "disabled", elem_id="train_clip_grad_value")
    with gr.Row():
        f["batch_size"] = gr.Number(d["batch_size"], label="Batch size", precision=0, minimum=1,
                                    elem_id="train_batch_size")
        f["gradient_step"] = gr.Number(d["gradient_step"], label="Gradient accumulation steps", precision=0,
                                       minimum=1, elem_id="train_gradient_step")


def _data_fields(ui: TrainUI, d: dict[str, Any]) -> None:
    f, p = ui.fields, ui.parts
    f["data_root"] = gr.Textbox(d["data_root"], label="Dataset directory",
                                placeholder="Path to directory with input images", elem_id="train_dataset_directory")
    f["log_directory"] = gr.Textbox(d["log_directory"], label="Log directory",
                                    placeholder="Path to directory where to write outputs",
                                    elem_id="train_log_directory")
    with gr.Row():
        f["template_filename"] = gr.Dropdown(ui.handlers.template_names(), value=d["template_filename"],
                                             label="Prompt template", elem_id="train_template_file")
        p["refresh_templates"] = tool_button(REFRESH, "train_refresh_template_file")
    f["training_width"] = gr.Slider(64, 2048, value=d["training_width"], step=8, label="Width",
                                    elem_id="train_training_width")
    f["training_height"] = gr.Slider(64, 2048, value=d["training_height"], step=8, label="Height",
                                     elem_id="train_training_height")
    with gr.Row():
        f["varsize"] = gr.Checkbox(d["varsize"], label="Do not resize images", elem_id="train_varsize")
        f["buckets"] = gr.Checkbox(d["buckets"], label="Aspect-ratio buckets", elem_id="train_buckets")
    with gr.Row():
        f["steps"] = gr.Number(d["steps"], label="Max steps", precision=0, minimum=1, elem_id="train_steps")
        f["epochs"] = gr.Number(d["epochs"], label="Epochs (0 = use max steps)", precision=0, minimum=0,
                                elem_id="train_epochs")
    f["create_image_every"] = gr.Number(d["create_image_every"], precision=0, minimum=0,
                                        label="Save an image to log directory every N steps, 0 to disable",
                                        elem_id="train_create_image_every")
    f["save_every"] = gr.Number(d["save_every"], precision=0, minimum=0,
                                label="Save a copy of embedding to log directory every N steps, 0 to disable",
                                elem_id="train_save_embedding_every")
    f["use_weight"] = gr.Checkbox(d["use_weight"], label="Use PNG alpha channel as loss weight",
                                  elem_id="train_use_weight")
    f["save_image_with_stored_embedding"] = gr.Checkbox(d["save_image_with_stored_embedding"],
                                                        label="Save images with embedding in PNG chunks",
                                                        elem_id="train_save_image_with_stored_embedding")


def _preview_fields(ui: TrainUI, d: dict[str, Any]) -> None:
    f, p = ui.fields, ui.parts
    with gr.Row():
        f["preview_from_txt2img"] = gr.Checkbox(
            d["preview_from_txt2img"], label="Read parameters (prompt, etc...) from txt2img tab when making previews",
            elem_id="train_preview_from_txt2img")
    with gr.Group(visible=d["preview_from_txt2img"], elem_id="train_preview_group") as p["preview_group"]:
        p["copy_txt2img"] = gr.Button("\u2199\ufe0f Copy from txt2img", size="sm", elem_id="train_copy_txt2img")
        f["preview_prompt"] = gr.Textbox(d["preview_prompt"], label="Preview prompt", lines=2,
                                         placeholder="Empty: the training prompt", elem_id="train_preview_prompt")
        f["preview_negative_prompt"] = gr.Textbox(d["preview_negative_prompt"], label="Preview negative prompt",
                                                  elem_id="train_preview_negative_prompt")
        with gr.Row():
            f["preview_steps"] = gr.Slider(1, 150, value=d["preview_steps"], step=1, label="Sampling steps",
                                           elem_id="train_preview_steps")
            f["preview_sampler_name"] = gr.Dropdown(samplers.sampler_names(), value=d["preview_sampler_name"],
                                                    label="Sampling method", elem_id="train_preview_sampler")
            f["preview_cfg_scale"] = gr.Slider(1.0, 30.0, value=d["preview_cfg_scale"], step=0.5,
                                               label="CFG Scale", elem_id="train_preview_cfg_scale")
        with gr.Row():
            f["preview_seed"] = gr.Number(d["preview_seed"], label="Seed", precision=0, elem_id="train_preview_seed")
            f["preview_width"] = gr.Slider(64, 2048, value=d["preview_width"], step=8, label="Width",
                                           elem_id="train_preview_width")
            f["preview_height"] = gr.Slider(64, 2048, value=d["preview_height"], step=8, label="Height",
                                            elem_id="train_preview_height")


def _augment_fields(ui: TrainUI, d: dict[str, Any]) -> None:
    f = ui.fields
    f["shuffle_tags"] = gr.Checkbox(d["shuffle_tags"], label="Shuffle tags by ',' when creating prompts.",
                                    elem_id="train_shuffle_tags")
    f["tag_drop_out"] = gr.Slider(0.0, 1.0, value=d["tag_drop_out"], step=0.1,
                                  label="Drop out tags when creating prompts.", elem_id="train_tag_drop_out")
    f["latent_sampling_method"] = gr.Radio(list(LATENT_SAMPLING), value=d["latent_sampling_method"],
                                           label="Choose latent sampling method",
                                           elem_id="train_latent_sampling_method")
    with gr.Accordion("More options", open=False, elem_id="train_more_options"):
        with gr.Row():
            f["flip"] = gr.Checkbox(d["flip"], label="Flip augmentation (random horizontal flips)",
                                    elem_id="train_flip")
            f["gradient_checkpointing"] = gr.Checkbox(d["gradient_checkpointing"], label="Gradient checkpointing",
                                                      elem_id="train_gradient_checkpointing")
        with gr.Row():
            f["noise_offset"] = gr.Number(d["noise_offset"], label="Noise offset", minimum=0,
                                          elem_id="train_noise_offset")
            f["min_snr_gamma"] = gr.Number(d["min_snr_gamma"], label="Min-SNR gamma (0 = off, e.g. 5)", minimum=0,
                                           elem_id="train_min_snr_gamma")
        with gr.Row():
            f["mixed_precision"] = gr.Dropdown(list(MIXED_PRECISION), value=d["mixed_precision"],
                                               label="Mixed precision (CUDA only)", elem_id="train_mixed_precision")
            f["seed"] = gr.Number(d["seed"], label="Seed (-1 = random)", precision=0, elem_id="train_seed")


def _results(ui: TrainUI) -> None:
    p = ui.parts
    p["progress"] = gr.HTML("", elem_id="train_progress")
    p["losses"] = gr.LinePlot(loss_frame(()), x="step", y="loss", title="Loss", x_title="Step", y_title="Loss",
                              height=260, elem_id="train_loss_plot")
    p["preview"] = gr.Image(label="Preview", type="pil", interactive=False, height=320, elem_id="train_preview")
    p["saved"] = gr.Textbox(label="Files saved", lines=3, max_lines=12, interactive=False, elem_id="train_saved")
    p["info"] = gr.HTML("", elem_id="train_info")
    with gr.Row():
        p["use_txt2img"] = gr.Button("Use in txt2img", size="sm", elem_id="train_use_in_txt2img")
    p["use_message"] = gr.HTML("", elem_id="train_use_message")
    p["job_id"] = gr.State(None)
    p["trained"] = gr.State(None)


def _train_sub_tab(ui: TrainUI) -> None:
    d = default_values()
    p = ui.parts
    with gr.Row(equal_height=False, elem_id="train_row"):
        with gr.Column(elem_id="train_form"):
            _kind_fields(ui, d)
            _schedule_fields(ui, d)
            _data_fields(ui, d)
            _preview_fields(ui, d)
            _augment_fields(ui, d)
            with gr.Row():
                p["interrupt"] = gr.Button("Interrupt", variant="stop", elem_id="train_interrupt_training")
                p["train"] = gr.Button(f"Train {EMBEDDING}", variant="primary", elem_id="train_train")
        with gr.Column(elem_id="train_results"):
            _results(ui)


def build_train_tab(app: App) -> TrainUI:
    """Create the tab's components inside the current ``gr.Tab`` and wire its own events (the ones that reach
    other tabs are wired by :func:`connect_train_send`)."""
    ui = TrainUI(TrainHandlers(app))
    with gr.Tabs(elem_id="train_tabs"):
        with gr.Tab("Create embedding", id="train_create_embedding_tab", elem_id="train_create_embedding_tab"):
            _create_embedding(ui)
        with gr.Tab("Preprocess images", id="train_preprocess_tab", elem_id="train_preprocess_tab"):
            _preprocess(ui)
        with gr.Tab("Train", id="train_train_tab", elem_id="train_train_tab"):
            _train_sub_tab(ui)
    _wire(ui)
    return ui


def _wire(ui: TrainUI) -> None:
    f, p, h = ui.fields, ui.parts, ui.handlers
    p["refresh_embeddings"].click(h.refresh_embeddings, inputs=[f["embedding_name"]],
                                  outputs=[f["embedding_name"]], **QUIET)
    p["refresh_templates"].click(h.refresh_templates, inputs=[f["template_filename"]],
                                 outputs=[f["template_filename"]], **QUIET)
    moved = [f[name] for name in KIND_DEFAULTS]
    f["train_kind"].change(h.switch_kind, inputs=[f["train_kind"], *moved],
                           outputs=[p["embedding_group"], p["lora_group"], p["train"], *moved], **QUIET)
    f["preview_from_txt2img"].change(lambda on: gr.update(visible=bool(on)), inputs=[f["preview_from_txt2img"]],
                                     outputs=[p["preview_group"]], **QUIET)
    f["clip_grad_mode"].change(lambda mode: gr.update(visible=mode != "disabled"), inputs=[f["clip_grad_mode"]],
                               outputs=[f["clip_grad_value"]], **QUIET)
    p["create_embedding"].click(
        h.create_embedding, inputs=[p["new_embedding_name"], p["nvpt"], p["overwrite_old_embedding"],
                                    p["initialization_text"]],
        outputs=[p["create_info"], f["embedding_name"]], show_progress="minimal", api_visibility="private")
    p["train"].click(h.train_as, inputs=ui.inputs(), outputs=ui.outputs(), show_progress="hidden",
                     concurrency_limit=None, concurrency_id="train_train", api_visibility="private")
    p["interrupt"].click(h.interrupt, inputs=[p["job_id"]], outputs=None, **QUIET)


def connect_train_send(train: TrainUI, txt2img: Any, main_tabs: gr.Tabs) -> None:
    """The Train tab's links to other tabs: "Use in txt2img" (the trained network's tag into the txt2img prompt),
    "Copy from txt2img" (the preview's parameters) and "Go to Extras"."""
    f, p = train.fields, train.parts
    prompt = txt2img.fields["prompt"]
    p["use_txt2img"].click(train.handlers.use_in_txt2img,
                           inputs=[p["trained"], f["train_kind"], f["embedding_name"], f["lora_name"], prompt],
                           outputs=[main_tabs, prompt, p["use_message"]], **QUIET)
    p["copy_txt2img"].click(lambda *values: values, inputs=[txt2img.fields[name] for name in PREVIEW_TXT2IMG],
                            outputs=[f[f"preview_{name}"] for name in PREVIEW_TXT2IMG], **QUIET)
    p["go_to_extras"].click(lambda: gr.Tabs(selected="extras"), outputs=[main_tabs], **QUIET)
