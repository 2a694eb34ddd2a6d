"""The page script in a real headless Chromium (webui/ui/page_script.py): A1111's keys (Ctrl+Enter generates, Esc
interrupts, Ctrl+Up/Down edit the attention weight), a title on every icon button, text instead of emoji this
machine cannot draw, and a phone-wide window that does not scroll sideways."""

from __future__ import annotations

import pytest

from tests.browser_support import css, set_number, value_of, wait

pytest_plugins = ["tests.browser_support"]  # the driver and webui_server fixtures
pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPT = "#txt2img_prompt textarea"

# every icon button in the page: (id, text, title, aria-label, fallback text, missing, shown)
ICON_BUTTONS_JS = """
return Array.from(document.querySelectorAll("button")).filter(b => {
  const text = b.textContent.replace(/\\uFE0F/g, "").trim();
  return b.classList.contains("sd-tool") || (text.length > 0 && text.length <= 2 && !/[\\p{L}\\p{N}]/u.test(text));
}).map(b => [b.id, b.textContent.trim(), b.title, b.getAttribute("aria-label"), b.getAttribute("data-sd-icon-text"),
             b.hasAttribute("data-sd-icon-missing"), getComputedStyle(b, "::after").content]);
"""


@pytest.fixture
def server(webui_server):
    return webui_server(models=[("sd1", "tiny")])


def _keys(drv, *keys, modifier=None) -> None:
    """Press ``keys`` (holding ``modifier``) in the focused element, as a user does."""
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(drv)
    if modifier is not None:
        chain.key_down(modifier)
    chain.send_keys(*keys)
    if modifier is not None:
        chain.key_up(modifier)
    chain.perform()


def _selection(drv) -> tuple[str, int, int]:
    return tuple(drv.execute_script(  # type: ignore[return-value]
        "const t = document.querySelector(arguments[0]); return [t.value, t.selectionStart, t.selectionEnd];", PROMPT))


def _check_icon_buttons(drv) -> int:
    """Every icon button has a title, an aria-label and a short text; that text is shown where the symbol is not."""
    from selenium.common.exceptions import TimeoutException

    def titled(d):
        found = d.execute_script(ICON_BUTTONS_JS)
        return found if found and all(title and label for _, _, title, label, *_ in found) else None

    try:
        buttons = wait(drv, titled, 10, "a title and an aria-label on every icon button")
    except TimeoutException:
        untitled = [b for b in drv.execute_script(ICON_BUTTONS_JS) if not (b[2] and b[3])]
        raise AssertionError(f"icon buttons without a title or aria-label: {untitled}") from None
    for elem_id, text, _, _, fallback, missing, after in buttons:
        assert fallback, (elem_id, text)
        if missing:  # a symbol no font here draws: its short text is shown instead
            assert after.strip('"') == fallback, (elem_id, text, after)
    return len(buttons)


def _set_width(drv, width: int | None) -> None:
    """Chromium's window is at least 500 px wide: a narrower viewport is emulated (``None``: the window's own)."""
    if width is None:
        drv.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        wait(drv, lambda d: d.execute_script("return innerWidth") > 500, 5, "the window's width")
    else:
        drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": 844, "deviceScaleFactor": 1, "mobile": False})
        wait(drv, lambda d: d.execute_script("return innerWidth") == width, 5, f"a {width} px wide viewport")


def _check_narrow_layout(drv, tab: str) -> None:
    layout = drv.execute_script("""
        const box = (s) => document.querySelector(s).getBoundingClientRect();
        const prompt = box(arguments[0]), generate = box(arguments[1]);
        return {scroll: document.documentElement.scrollWidth, inner: innerWidth,
                prompt: [prompt.left, prompt.right, prompt.width, prompt.bottom],
                generate: [generate.left, generate.right, generate.top, generate.height]};""",
                                f"#{tab}_prompt textarea", f"#{tab}_generate")
    assert layout["scroll"] <= layout["inner"], layout  # no sideways scrolling
    left, right, width, bottom = layout["prompt"]
    assert left >= 0 and right <= layout["inner"] and width >= 200, layout
    g_left, g_right, g_top, g_height = layout["generate"]
    assert g_left >= 0 and g_right <= layout["inner"] and g_height >= 30, layout
    assert g_top >= bottom, layout  # the columns are stacked: Generate below the prompt


def test_keys_tooltips_and_narrow_screen(server, driver):
    from selenium.webdriver.common.keys import Keys

    url, data_dir = server
    drv = driver
    drv.get(url)
    wait(drv, lambda d: d.find_elements("css selector", PROMPT), 30, "the txt2img tab")
    wait(drv, lambda d: d.execute_script("return !!window.sdwebuiPage"), 10, "the page script")
    wait(drv, lambda d: "Loaded" in css(d, "#sd_model_status").text, 30, "the model to load")

    # -- tooltips: every icon button, A1111's texts; the img2img tab's buttons appear when it is first opened
    assert _check_icon_buttons(drv) >= 10
    assert css(drv, "#txt2img_random_seed").get_attribute("title") == (
        "Set seed to -1, which will cause a new random number to be used every time")
    assert css(drv, "#paste").get_attribute("title").startswith("Read generation parameters from prompt")
    assert css(drv, "#txt2img_res_switch_btn").get_attribute("title") == "Switch width/height"
    # the missing-glyph test itself: a letter is drawn, a code point no font has is not
    family = drv.execute_script("return getComputedStyle(document.querySelector('#txt2img_random_seed')).fontFamily")
    assert drv.execute_script("return [sdwebuiPage.glyphRenders('A', arguments[0]), "
                              "sdwebuiPage.glyphRenders('\\u{10FFFD}', arguments[0])]", family) == [True, False]
    css(drv, "#tab_img2img-button").click()
    wait(drv, lambda d: d.find_elements("css selector", "#img2img_random_seed"), 10, "the img2img tab")
    _check_icon_buttons(drv)
    assert css(drv, "#img2img_clear_prompt").get_attribute("title") == "Clear prompt"
    css(drv, "#tab_txt2img-button").click()
    prompt = wait(drv, lambda d: (p := css(d, PROMPT)).is_displayed() and p, 10, "the txt2img tab again")

    # -- Ctrl+Up / Ctrl+Down: the selected word, then the word under the cursor
    prompt.click()
    prompt.send_keys("a cat, dog")
    drv.execute_script("document.querySelector(arguments[0]).setSelectionRange(2, 5)", PROMPT)
    _keys(drv, Keys.ARROW_UP, modifier=Keys.CONTROL)
    assert _selection(drv) == ("a (cat:1.1), dog", 3, 6)  # the selection stays on the word
    _keys(drv, Keys.ARROW_UP, modifier=Keys.CONTROL)
    assert _selection(drv) == ("a (cat:1.2), dog", 3, 6)
    _keys(drv, Keys.ARROW_DOWN, modifier=Keys.CONTROL)
    _keys(drv, Keys.ARROW_DOWN, modifier=Keys.CONTROL)
    assert _selection(drv) == ("a cat, dog", 2, 5)  # back at 1.0: no parentheses
    drv.execute_script("document.querySelector(arguments[0]).setSelectionRange(9, 9)", PROMPT)  # in "dog"
    _keys(drv, Keys.ARROW_UP, modifier=Keys.CONTROL)
    assert _selection(drv) == ("a cat, (dog:1.1)", 8, 11)
    drv.execute_script("document.querySelector(arguments[0]).setSelectionRange(4, 4)", PROMPT)  # in "cat"
    _keys(drv, Keys.ARROW_DOWN, modifier=Keys.CONTROL)
    assert _selection(drv) == ("a (cat:0.9), (dog:1.1)", 3, 6)
    _keys(drv, Keys.ARROW_UP, modifier=Keys.CONTROL)
    assert _selection(drv)[0] == "a cat, (dog:1.1)"

    # -- Ctrl+Enter in the prompt generates; the edited prompt is what gradio sent
    for elem_id, value in (("txt2img_steps", 2), ("txt2img_width", 64), ("txt2img_height", 64)):
        set_number(drv, elem_id, value)
    prompt.click()
    _keys(drv, Keys.ENTER, modifier=Keys.CONTROL)
    wait(drv, lambda d: d.find_elements("css selector", "#txt2img_gallery img"), 60, "an image in the gallery")
    wait(drv, lambda d: "Steps: 2" in css(d, "#html_info_txt2img").text, 10, "the infotext")
    assert css(drv, "#html_info_txt2img").text.startswith("a cat, (dog:1.1)")
    assert value_of(drv, PROMPT) == "a cat, (dog:1.1)"  # Ctrl+Enter added no new line

    # -- Ctrl+Enter while generating: interrupts, then generates anew (as A1111); Esc interrupts
    drv.execute_script("""  // the running state, sampled: [false, true, false, true] is a restart
        const states = window.sdTestStates = [];
        setInterval(() => {
          const now = sdwebuiPage.running("txt2img");
          if (states[states.length - 1] !== now) states.push(now);
        }, 10);""")
    set_number(drv, "txt2img_batch_count", 100)
    prompt.click()
    _keys(drv, Keys.ENTER, modifier=Keys.CONTROL)
    wait(drv, lambda d: "%" in css(d, "#txt2img_progress").text, 30, "progress")
    _keys(drv, Keys.ENTER, modifier=Keys.CONTROL)
    wait(drv, lambda d: d.execute_script("return sdTestStates").count(True) >= 2, 30, "the restarted generation")
    wait(drv, lambda d: "%" in css(d, "#txt2img_progress").text, 30, "progress")
    assert "Interrupted" not in css(drv, "#html_log_txt2img").text
    _keys(drv, Keys.ESCAPE)
    wait(drv, lambda d: "Interrupted" in css(d, "#html_log_txt2img").text, 90, "the interrupt note")  # a loaded CI
    note = css(drv, "#html_log_txt2img").text
    assert int(note.split("Interrupted:")[1].split(" of ")[0]) < 100, note

    # -- a phone-wide window: no sideways scrolling, prompt and Generate usable, on txt2img and img2img
    for name in ("txt2img", "img2img"):
        _set_width(drv, None)
        css(drv, f"#tab_{name}-button").click()
        wait(drv, lambda d, n=name: css(d, f"#{n}_prompt textarea").is_displayed(), 10, f"the {name} tab")
        _set_width(drv, 390)
        wait(drv, lambda d: d.execute_script("return document.documentElement.scrollWidth <= innerWidth"), 5,
             "the narrow layout")
        _check_narrow_layout(drv, name)
        _check_icon_buttons(drv)
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]
