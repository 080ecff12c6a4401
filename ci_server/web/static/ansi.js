// ANSI SGR colours to DOM nodes. Text is only ever set as textContent: a job's output can
// hold any markup and it stays text. Escape sequences other than colours are dropped.
"use strict";
(function () {
  const SGR = /\x1b\[([0-9;]*)m/g;
  const OTHER_ESCAPES = /\x1b(\[[0-9;?]*[ -\/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])?/g;
  const PALETTE = [
    "#000000", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
    "#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff",
  ];

  function color256(n) {
    if (n < 16) return PALETTE[n];
    if (n >= 232) { const v = 8 + (n - 232) * 10; return `rgb(${v},${v},${v})`; }
    n -= 16;
    const level = (c) => (c === 0 ? 0 : 55 + c * 40);
    return `rgb(${level(Math.floor(n / 36))},${level(Math.floor(n / 6) % 6)},${level(n % 6)})`;
  }

  function apply(state, params) {
    const codes = params === "" ? [0] : params.split(";").map((p) => parseInt(p || "0", 10));
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) { state.classes.clear(); state.fg = state.bg = null; }
      else if (c === 1) state.classes.add("ansi-bold");
      else if (c === 2) state.classes.add("ansi-dim");
      else if (c === 3) state.classes.add("ansi-italic");
      else if (c === 4) state.classes.add("ansi-underline");
      else if (c === 22) { state.classes.delete("ansi-bold"); state.classes.delete("ansi-dim"); }
      else if (c === 23) state.classes.delete("ansi-italic");
      else if (c === 24) state.classes.delete("ansi-underline");
      else if ((c >= 30 && c <= 37) || (c >= 90 && c <= 97)) state.fg = { cls: `ansi-fg-${c}` };
      else if (c === 39) state.fg = null;
      else if ((c >= 40 && c <= 47)) state.bg = { cls: `ansi-bg-${c}` };
      else if (c >= 100 && c <= 107) state.bg = { color: PALETTE[c - 100 + 8] };
      else if (c === 49) state.bg = null;
      else if (c === 38 || c === 48) {
        let value = null;
        if (codes[i + 1] === 5 && i + 2 < codes.length) { value = color256(codes[i + 2] & 255); i += 2; }
        else if (codes[i + 1] === 2 && i + 4 < codes.length) {
          value = `rgb(${codes[i + 2] & 255},${codes[i + 3] & 255},${codes[i + 4] & 255})`; i += 4;
        }
        if (value !== null) { if (c === 38) state.fg = { color: value }; else state.bg = { color: value }; }
      }
    }
  }

  function styled(text, state) {
    if (!state.classes.size && !state.fg && !state.bg) return document.createTextNode(text);
    const span = document.createElement("span");
    span.textContent = text;
    for (const cls of state.classes) span.classList.add(cls);
    for (const [part, prop] of [[state.fg, "color"], [state.bg, "backgroundColor"]]) {
      if (!part) continue;
      if (part.cls) span.classList.add(part.cls);
      else span.style[prop] = part.color; // CSSOM, which the page's CSP allows
    }
    return span;
  }

  // A DocumentFragment of one line of output, its colours as spans.
  window.ansiFragment = function (line) {
    const fragment = document.createDocumentFragment();
    const state = { classes: new Set(), fg: null, bg: null };
    let last = 0;
    SGR.lastIndex = 0;
    let match;
    const emit = (text) => {
      text = text.replace(OTHER_ESCAPES, "");
      if (text) fragment.append(styled(text, state));
    };
    while ((match = SGR.exec(line)) !== null) {
      emit(line.slice(last, match.index));
      apply(state, match[1]);
      last = SGR.lastIndex;
    }
    emit(line.slice(last));
    return fragment;
  };
})();
