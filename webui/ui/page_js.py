"""The page script's JavaScript text (see :mod:`webui.ui.page_script`, which fills in its configuration): the pure
prompt-editing functions (``CORE_JS``, also run by the tests in node) and the page's keys, tooltips and emoji
fallback (``PAGE_JS_TEMPLATE``, with ``__CONFIG__`` and ``__CORE__`` to replace)."""

from __future__ import annotations

# The prompt-editing functions, pure (text and selection in, text and selection out): an expression whose value is
# ``{editAttention, editOrder, delimiters}``. Tests run it in node.
CORE_JS = r"""(function () {
  "use strict";
  const WHITESPACE = {"Tab": "\t", "Carriage Return": "\r", "Line Feed": "\n"};

  function delimiters(opts) {
    let result = String(opts.keyedit_delimiters);
    for (const name of opts.keyedit_delimiters_whitespace || []) result += WHITESPACE[name] || "";
    return result;
  }

  // A1111's edit-attention.js: -> {text, start, end} (the selection to show; the text may be unchanged), or null.
  function editAttention(text, selectionStart, selectionEnd, isPlus, opts) {
    const precision = Number(opts.keyedit_precision_attention);

    function selectBlock(OPEN, CLOSE) {
      if (selectionStart !== selectionEnd) return false;
      const before = text.substring(0, selectionStart);
      const open = before.lastIndexOf(OPEN);
      if (open === -1) return false;
      const closeBefore = before.lastIndexOf(CLOSE);
      if (closeBefore !== -1 && closeBefore > open) return false;
      const after = text.substring(selectionStart);
      const close = after.indexOf(CLOSE);
      if (close === -1) return false;
      const openAfter = after.indexOf(OPEN);
      if (openAfter !== -1 && openAfter < close) return false;
      const content = text.substring(open + 1, selectionStart + close);
      selectionStart = open + 1;
      selectionEnd = /.*:-?[\d.]+/s.test(content) ? selectionStart + content.lastIndexOf(":")
        : selectionStart + content.length;
      return true;
    }

    function selectWord() {
      if (selectionStart !== selectionEnd) return;
      const delims = delimiters(opts);
      while (selectionStart > 0 && !delims.includes(text[selectionStart - 1])) selectionStart--;
      while (selectionEnd < text.length && !delims.includes(text[selectionEnd])) selectionEnd++;
      while (text[selectionStart] === " " && selectionStart < selectionEnd) selectionStart++;
      while (text[selectionEnd - 1] === " " && selectionEnd > selectionStart) selectionEnd--;
    }

    if (!selectBlock("<", ">") && !selectBlock("(", ")") && !selectBlock("[", "]")) selectWord();
    const shownStart = selectionStart, shownEnd = selectionEnd;  // A1111 selects the block or word first
    const selectedOnly = () => ({text: text, start: shownStart, end: shownEnd});

    let closeCharacter = ")";
    let delta = precision;
    const start = selectionStart > 0 ? text[selectionStart - 1] : "";
    const end = text[selectionEnd];
    if (start === "<") {
      closeCharacter = ">";
      delta = Number(opts.keyedit_precision_extra);
    } else if ((start === "(" && end === ")") || (start === "[" && end === "]")) {
      // old-style emphasis, (((word))) or [word]: converted to (word:weight)
      let depth = 0;
      while (text[selectionStart - depth - 1] === start && text[selectionEnd + depth] === end) depth++;
      let weight = start === "[" ? (1 / 1.1) ** depth : 1.1 ** depth;
      weight = Math.round(weight / precision) * precision;
      text = text.slice(0, selectionStart - depth) + "(" + text.slice(selectionStart, selectionEnd) + ":" + weight +
        ")" + text.slice(selectionEnd + depth);
      selectionStart -= depth - 1;
      selectionEnd -= depth - 1;
    } else if (start !== "(") {
      while (selectionEnd > selectionStart && text[selectionEnd - 1] === " ") selectionEnd--;
      if (selectionStart === selectionEnd) return selectedOnly();
      text = text.slice(0, selectionStart) + "(" + text.slice(selectionStart, selectionEnd) + ":1.0)" +
        text.slice(selectionEnd);
      selectionStart++;
      selectionEnd++;
    }

    if (text[selectionEnd] !== ":") return selectedOnly();
    const weightLength = text.slice(selectionEnd + 1).indexOf(closeCharacter) + 1;
    let weight = parseFloat(text.slice(selectionEnd + 1, selectionEnd + weightLength));
    if (isNaN(weight)) return selectedOnly();
    weight += isPlus ? delta : -delta;
    weight = parseFloat(weight.toPrecision(12));
    const weightText = Number.isInteger(weight) ? weight + ".0" : String(weight);
    if (closeCharacter === ")" && weight === 1) {
      const close = text.substring(selectionEnd).indexOf(")");
      text = text.slice(0, selectionStart - 1) + text.slice(selectionStart, selectionEnd) +
        text.slice(selectionEnd + close + 1);
      selectionStart--;
      selectionEnd--;
    } else {
      text = text.slice(0, selectionEnd + 1) + weightText + text.slice(selectionEnd + weightLength);
    }
    return {text: text, start: selectionStart, end: selectionEnd};
  }

  // A1111's edit-order.js: the comma-separated items under the selection move one place left or right; or null.
  function editOrder(text, selectionStart, selectionEnd, isLeft) {
    const items = text.split(",");
    const indexStart = (text.slice(0, selectionStart).match(/,/g) || []).length;
    const indexEnd = (text.slice(0, selectionEnd).match(/,/g) || []).length;
    const range = indexEnd - indexStart + 1;
    if (isLeft && indexStart > 0) {
      items.splice(indexStart - 1, 0, ...items.splice(indexStart, range));
      return {text: items.join(),
              start: items.slice(0, indexStart - 1).join().length + (indexStart === 1 ? 0 : 1),
              end: items.slice(0, indexEnd).join().length};
    }
    if (!isLeft && indexEnd < items.length - 1) {
      items.splice(indexStart + 1, 0, ...items.splice(indexStart, range));
      return {text: items.join(),
              start: items.slice(0, indexStart + 1).join().length + 1,
              end: items.slice(0, indexEnd + 2).join().length};
    }
    return null;
  }

  return {editAttention: editAttention, editOrder: editOrder, delimiters: delimiters};
})()"""

PAGE_JS_TEMPLATE = r"""(function () {
  "use strict";
  if (window.sdwebuiPage) return;
  const CONFIG = __CONFIG__;
  const core = __CORE__;
  const page = window.sdwebuiPage = {config: CONFIG, core: core};

  // -- keys ------------------------------------------------------------------------------------------------------
  // A1111's prompt boxes: the top rows' prompts and the styles editor's (its ".prompt" class)
  const PROMPT_TEXTAREA = "*:is([id*='_toprow'] [id*='_prompt'], .prompt, [id$='_edit_style_prompt'], " +
    "[id$='_edit_style_neg_prompt']) textarea";

  function options() {  // A1111's keyedit options; a window.opts of A1111's (an extension's) wins
    const own = window.opts || {};
    const result = {};
    for (const key of Object.keys(CONFIG.keyedit)) {
      result[key] = own[key] !== undefined ? own[key] : CONFIG.keyedit[key];
    }
    return result;
  }

  function eventTarget(event) {
    return (event.composedPath && event.composedPath()[0]) || event.target;
  }

  function updateInput(target) {  // as A1111's updateInput: gradio reads the value on "input"
    target.dispatchEvent(new Event("input", {bubbles: true}));
  }

  function applyEdit(target, result) {
    if (!result) return;
    target.focus();
    if (result.text !== target.value) {
      target.value = result.text;
      target.setSelectionRange(result.start, result.end);
      updateInput(target);
    } else {
      target.setSelectionRange(result.start, result.end);
    }
  }

  function onPromptKeys(event) {
    const target = eventTarget(event);
    if (!(target instanceof HTMLTextAreaElement) || !target.matches(PROMPT_TEXTAREA)) return;
    const opts = options();
    if ((event.metaKey || event.ctrlKey) && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
      event.preventDefault();
      applyEdit(target, core.editAttention(target.value, target.selectionStart, target.selectionEnd,
                                           event.key === "ArrowUp", opts));
    } else if (event.altKey && (event.key === "ArrowLeft" || event.key === "ArrowRight") && opts.keyedit_move) {
      event.preventDefault();
      applyEdit(target, core.editOrder(target.value, target.selectionStart, target.selectionEnd,
                                       event.key === "ArrowLeft"));
    }
  }

  function currentTabContent() {  // the top-level tab shown
    for (const item of document.querySelectorAll("#tabs > .tabitem")) {
      if (getComputedStyle(item).display !== "none") return item;
    }
    return null;
  }

  function tabButtons() {  // the shown tab's Generate, Interrupt and Skip (A1111: button[id$=_generate] in the tab)
    const content = currentTabContent();
    const generate = content && content.querySelector("button[id$='_generate']");
    if (!generate) return null;
    const prefix = generate.id.slice(0, -"_generate".length);
    return {prefix: prefix, generate: generate, interrupt: document.getElementById(prefix + "_interrupt"),
            skip: document.getElementById(prefix + "_skip")};
  }

  function running(prefix) {  // the tab's progress bar is shown while its job is queued or runs
    const root = document.getElementById(prefix + "_progress") || document.getElementById(prefix + "_results");
    return !!(root && root.querySelector(".sd-progress"));
  }
  page.running = running;

  function popupOpen() {
    const popup = document.querySelector(".global-popup");
    if (popup && popup.style.display !== "none") return true;
    const active = document.activeElement;
    return !!(active && active.closest && active.closest("#lightboxModal, [role='dialog'], [aria-modal='true']"));
  }

  // Ctrl+Enter while generating: interrupt, then generate anew once the job has stopped. Gradio drops a click
  // while the tab's Generate event is still pending (its trigger_mode "once"), which it is for a moment after the
  // last update: the click is repeated until the new job shows (its progress or log changes), at most 5 times.
  const restarting = {};
  function generateWhenStopped(tab) {
    const prefix = tab.prefix;
    if (restarting[prefix]) return;
    restarting[prefix] = true;
    const started = Date.now();
    let stopped = false, accepted = false, clicks = 0, lastClick = 0, observer = null;
    const timer = setInterval(function () {
      const now = Date.now();
      if (!stopped) {
        if (running(prefix) && now - started < 120000) return;
        if (running(prefix)) return finish();
        stopped = true;
        observer = new MutationObserver(function () { if (lastClick) accepted = true; });
        for (const id of [prefix + "_progress", "html_log_" + prefix]) {
          const target = document.getElementById(id);
          if (target) observer.observe(target, {childList: true, subtree: true, characterData: true});
        }
      }
      if (accepted || running(prefix) || clicks >= 5) return finish();
      if (now - lastClick >= 1000) {
        lastClick = now;
        clicks++;
        (document.getElementById(prefix + "_generate") || tab.generate).click();
      }
    }, 50);
    function finish() {
      clearInterval(timer);
      if (observer) observer.disconnect();
      delete restarting[prefix];
    }
  }

  function onGenerateKeys(event) {
    if (event.isComposing) return;
    const isEnter = event.key === "Enter" || event.keyCode === 13;
    const isEsc = event.key === "Escape";
    if (!isEnter && !isEsc) return;
    const tab = tabButtons();
    if (!tab) return;
    if (isEnter && (event.metaKey || event.ctrlKey)) {
      event.preventDefault();
      if (tab.interrupt && running(tab.prefix)) {
        tab.interrupt.click();
        generateWhenStopped(tab);
      } else {
        tab.generate.click();
      }
    } else if (isEnter && event.altKey) {
      event.preventDefault();
      if (tab.skip) tab.skip.click();
    } else if (isEsc && !event.defaultPrevented && !popupOpen() && tab.interrupt && running(tab.prefix)) {
      event.preventDefault();
      tab.interrupt.click();
    }
  }

  document.addEventListener("keydown", function (event) {
    onPromptKeys(event);
    onGenerateKeys(event);
  });

  // -- tooltips and icon fallbacks ---------------------------------------------------------------------------------
  function symbolOf(text) {
    return String(text || "").replace(/\uFE0F/g, "").trim();
  }

  function isIconText(symbol) {
    return symbol.length > 0 && symbol.length <= 2 && !/[\p{L}\p{N}]/u.test(symbol);
  }

  function humanize(id) {
    const words = String(id || "").split(/[_-]+/).filter(Boolean).join(" ");
    return words.charAt(0).toUpperCase() + words.slice(1);
  }

  function iconInfo(button, symbol) {
    if (button.id && Object.prototype.hasOwnProperty.call(CONFIG.ids, button.id)) return CONFIG.ids[button.id];
    if (Object.prototype.hasOwnProperty.call(CONFIG.symbols, symbol)) return CONFIG.symbols[symbol];
    const label = button.getAttribute("aria-label");
    if (label && isIconText(symbol)) return {title: label, name: label, text: label.split(" ")[0]};
    if (!button.classList.contains("sd-tool")) return null;
    const words = humanize(button.id) || "Button";
    return {title: words, name: words, text: words.split(" ")[0]};
  }

  // Whether a symbol is drawn with a font that has it: drawn on a canvas, it must differ from the "missing glyph"
  // box of a code point no font has (U+10FFFD; U+0378 as a check that missing glyphs all look the same here).
  const glyphs = new Map();
  let canvas = null;
  function glyphRenders(symbol, family) {
    const key = family + "\n" + symbol;
    if (glyphs.has(key)) return glyphs.get(key);
    let result = true;
    try {
      canvas = canvas || document.createElement("canvas");
      canvas.width = canvas.height = 48;
      const ctx = canvas.getContext("2d", {willReadFrequently: true});
      const draw = function (text) {
        ctx.clearRect(0, 0, 48, 48);
        ctx.font = "32px " + family;
        ctx.textBaseline = "middle";
        ctx.fillStyle = "#000";
        ctx.fillText(text, 4, 24);
        return ctx.getImageData(0, 0, 48, 48).data;
      };
      const same = function (a, b) {
        if (a.length !== b.length) return false;
        for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
        return true;
      };
      const inked = function (data) {
        for (let i = 3; i < data.length; i += 4) if (data[i]) return true;
        return false;
      };
      const image = draw(symbol);
      const missing = draw("\u{10FFFD}");
      if (!inked(image)) result = false;
      else if (same(image, missing) && same(missing, draw("\u0378"))) result = false;
    } catch (e) {
      result = true;  // cannot tell: keep the symbol (the title and aria-label still say what it does)
    }
    glyphs.set(key, result);
    return result;
  }
  page.glyphRenders = glyphRenders;

  function decorate(button) {
    const symbol = symbolOf(button.textContent);
    const info = iconInfo(button, symbol);
    if (!info) return;
    if (!button.title || button.getAttribute("data-sd-title") === button.title) {
      button.title = info.title;
      button.setAttribute("data-sd-title", info.title);
    }
    if (!isIconText(symbol)) return;
    const label = button.getAttribute("aria-label");
    if (!label || button.getAttribute("data-sd-name") === label) {
      button.setAttribute("aria-label", info.name);
      button.setAttribute("data-sd-name", info.name);
    }
    button.setAttribute("data-sd-icon-text", info.text);
    const family = getComputedStyle(button).fontFamily;
    if (glyphRenders(button.textContent.trim(), family)) button.removeAttribute("data-sd-icon-missing");
    else button.setAttribute("data-sd-icon-missing", "");
  }

  const HINTED = "span, p, li.item, button";
  function hint(element) {  // A1111's hints.js: a title by the element's text (or a dropdown item's value)
    if (element.title) return;
    const text = (element.textContent || "").trim();
    let title = Object.prototype.hasOwnProperty.call(CONFIG.hints, text) ? CONFIG.hints[text] : null;
    const value = element.dataset && element.dataset.value;
    if (!title && value && Object.prototype.hasOwnProperty.call(CONFIG.hints, value)) title = CONFIG.hints[value];
    if (title) element.title = title;
  }

  const pending = new Set();
  let timer = null;
  function flush() {
    timer = null;
    const nodes = Array.from(pending);
    pending.clear();
    for (const node of nodes) {
      if (!node.isConnected) continue;
      const buttons = node.matches("button") ? [node] : [];
      for (const b of node.querySelectorAll("button")) buttons.push(b);
      for (const b of buttons) decorate(b);
      const hinted = node.matches(HINTED) ? [node] : [];
      for (const e of node.querySelectorAll(HINTED)) hinted.push(e);
      for (const e of hinted) hint(e);
    }
  }
  function schedule(node) {
    if (!node || node.nodeType !== 1) return;
    pending.add(node);
    if (timer === null) timer = setTimeout(flush, 50);
  }
  page.refresh = function () {
    glyphs.clear();
    schedule(document.body);
    flush();
  };

  new MutationObserver(function (records) {
    for (const record of records) {
      if (record.type === "characterData") {
        const parent = record.target.parentElement;
        schedule(parent && parent.closest("button"));
        continue;
      }
      for (const node of record.addedNodes) schedule(node.nodeType === 1 ? node : node.parentElement);
    }
  }).observe(document.body, {childList: true, subtree: true, characterData: true});
  schedule(document.body);
  if (document.fonts && document.fonts.ready) document.fonts.ready.then(page.refresh);
})();
"""
