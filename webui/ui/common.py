"""Helpers shared by the tabs: tool buttons, HTML rendering of infotext/progress/errors, the token counter."""

from __future__ import annotations

import html
import threading
from typing import Any

import gradio as gr

from modules.errors import WebUIError

# A1111's tool button symbols
PASTE = "\u2199\ufe0f"  # ↙️ read generation parameters from prompt or last generation
RANDOM = "\U0001f3b2\ufe0f"  # 🎲 set seed to -1
REUSE = "\u267b\ufe0f"  # ♻️ reuse seed from last generation
REFRESH = "\U0001f504"  # 🔄
CLEAR = "\U0001f5d1\ufe0f"  # 🗑️

CSS = """
.sd-tool { max-width: 2.6em !important; min-width: 2.6em !important; padding: 0.2em !important;
           align-self: end; font-size: 1.1em; }
#quicksettings { align-items: end; gap: 0.5em; }
#quicksettings > *:not(#sd_model_status) { flex-grow: 0; }
#sd_model_checkpoint_dropdown { min-width: 24em; max-width: 36em; }
#sd_model_status { align-self: center; font-size: 0.9em; opacity: 0.85; }
.sd-token-counter { text-align: right; font-size: 0.8em; opacity: 0.7; padding-right: 0.8em; }
#txt2img_token_counter, #txt2img_negative_token_counter, #img2img_token_counter, #img2img_negative_token_counter {
    margin-top: calc(-1 * var(--layout-gap, 16px) - 1.6em);
    margin-bottom: 0.4em; z-index: 5; pointer-events: none; }
.sd-progress { position: relative; height: 1.5em; border-radius: 4px; background: rgba(127,127,127,0.25);
               overflow: hidden; margin: 0.3em 0; }
.sd-progress-bar { height: 100%; background: #f97316; transition: width 0.2s; }
.sd-progress-text { position: absolute; inset: 0; text-align: center; font-size: 0.85em; line-height: 1.5em; }
.sd-progress-info { font-size: 0.85em; opacity: 0.85; }
.sd-error { border: 1px solid #e05050; background: rgba(224,80,80,0.12); color: inherit; padding: 0.5em 0.8em;
            border-radius: 6px; margin: 0.3em 0; }
.sd-warning { border: 1px solid #d9a400; background: rgba(217,164,0,0.12); padding: 0.5em 0.8em;
              border-radius: 6px; margin: 0.3em 0; }
.sd-info { font-size: 0.85em; opacity: 0.85; }
.sd-infotext { font-size: 0.9em; word-break: break-word; padding: 0.3em 0; }
.sd-infotext .sd-time { opacity: 0.7; font-size: 0.9em; margin-top: 0.3em; }
#txt2img_generate, #img2img_generate { min-height: 4.5em; font-size: 1.2em; }
"""


def tool_button(symbol: str, elem_id: str, tooltip: str = "") -> gr.Button:
    """A small square button like A1111's ``ToolButton``."""
    del tooltip  # gradio buttons have no title attribute; the elem_id documents the purpose
    return gr.Button(symbol, elem_id=elem_id, elem_classes=["sd-tool"], size="sm", variant="secondary", min_width=40,
                     scale=0)


def style_tag() -> str:
    """The page's CSS as a ``<style>`` element (gradio 6 takes page CSS only at mount time)."""
    return f"<style>{CSS}</style>"


def escape_lines(text: str) -> str:
    """Plain text as HTML, each line kept (A1111's ``plaintext_to_html``)."""
    return "<br>".join(html.escape(line) for line in text.split("\n"))


def infotext_html(text: str | None, extra: str = "") -> str:
    if not text:
        return ""
    tail = f'<div class="sd-time">{html.escape(extra)}</div>' if extra else ""
    return f'<div class="sd-infotext"><p>{escape_lines(text)}</p>{tail}</div>'


def error_html(message: str | None) -> str:
    return f'<div class="sd-error">{escape_lines(message)}</div>' if message else ""


def toast(message: str, title: str = "Error") -> None:
    """The same message as a toast in the corner of the page (where the user is looking when the message below
    the gallery is out of sight); outside a page event it only goes to the log."""
    try:
        gr.Warning(message, title=title)
    except Exception:  # noqa: BLE001 - a toast is an extra; never a reason to fail
        pass


def _named_bounds(component: type[gr.Number] | type[gr.Slider]) -> None:
    """A number or slider value outside its bounds (a number box typed into, a value pasted) is refused with a
    message naming the field, as a toast, without a traceback in the server log."""
    original = component.preprocess
    if getattr(original, "_sd_named", False):
        return

    def preprocess(self: Any, payload: Any) -> Any:
        try:
            return original(self, payload)
        except gr.Error as exc:
            name = self.label or self.elem_id or "a number"
            raise gr.Error(f"{name}: {exc.message}", print_exception=False) from None

    preprocess._sd_named = True  # type: ignore[attr-defined]
    component.preprocess = preprocess  # type: ignore[method-assign,assignment]


_named_bounds(gr.Number)
_named_bounds(gr.Slider)


def warning_html(messages: list[str] | tuple[str, ...]) -> str:
    if not messages:
        return ""
    return "".join(f'<div class="sd-warning">{escape_lines(m)}</div>' for m in messages)


def user_message(exc: BaseException) -> str:
    """A short message for the UI; never a traceback."""
    if isinstance(exc, WebUIError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" if str(exc) else type(exc).__name__


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes:02d}:{sec:02d}"


def progress_html(fraction: float, text: str, info: str = "") -> str:
    pct = max(0.0, min(1.0, fraction)) * 100
    info_html = f'<div class="sd-progress-info">{html.escape(info)}</div>' if info else ""
    return (f'<div class="sd-progress"><div class="sd-progress-bar" style="width:{pct:.1f}%"></div>'
            f'<div class="sd-progress-text">{html.escape(text)}</div></div>{info_html}')


def token_html(count: int, limit: int) -> str:
    return f'<div class="sd-token-counter">{count}/{limit}</div>'


class TokenCounter:
    """The prompt boxes' "12/75" counters; the CLIP tokenizer is built on first use and kept."""

    def __init__(self) -> None:
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                from modules.models.tokenizer import build_clip_tokenizer

                self._tokenizer = build_clip_tokenizer()
            return self._tokenizer

    def warm_up(self) -> None:
        """Build the tokenizer in the background so the first keystroke does not wait for it."""
        if self._tokenizer is None:
            threading.Thread(target=self.tokenizer, name="tokenizer-warmup", daemon=True).start()

    def count(self, text: str, steps: int | float | None = 20, is_positive: bool = True) -> tuple[int, int]:
        from modules.prompts.chunks import count_tokens

        try:
            steps = max(1, int(steps or 20))
        except (TypeError, ValueError):
            steps = 20
        return count_tokens(text or "", self.tokenizer(), steps=steps, is_positive=is_positive)

    def html(self, text: str, steps: int | float | None = 20, is_positive: bool = True) -> str:
        try:
            count, limit = self.count(text, steps, is_positive)
        except Exception:  # noqa: BLE001 - a counter must never break typing
            return '<div class="sd-token-counter">?/75</div>'
        return token_html(count, limit)
