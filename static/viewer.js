// The series viewer (/series/<id>/view): frames rendered by Dolmen (preview.jpg), kept in a
// cache of prefetched images around the current one; wheel, keys and slider move, drag windows,
// shift-drag pans, +/- zooms, space plays. No framework, no inline script (the CSP stays).
(function () {
  "use strict";
  var PREFETCH = 8;        // images fetched ahead and behind the current one
  var CACHE_MAX = 96;      // images kept
  var WL_DELAY = 120;      // ms between window requests while dragging

  function start() {
    var root = document.getElementById("sv");
    if (!root || !root.dataset.stack) { return; }
    var data = JSON.parse(root.dataset.stack);
    var frames = data.frames;          // [instance id, frame (from 1), frames, number, position]
    var stage = root.querySelector(".sv-stage");
    var img = root.querySelector(".sv-img");
    var slider = root.querySelector("[data-act=slider]");
    var pos = root.querySelector(".sv-pos");
    var wl = root.querySelector(".sv-wl");
    var select = root.querySelector("[data-act=window]");
    var play = root.querySelector("[data-act=play]");
    var fpsInput = root.querySelector("[data-act=fps]");
    var state = { i: 0, window: null, zoom: 1, x: 0, y: 0, timer: null };
    var cache = new Map();             // url -> HTMLImageElement (loading or loaded)
    var fileWindow = data.window;      // the file's first window, where dragging starts

    function windowArg() {
      if (!state.window) { return ""; }
      return "&window=" + encodeURIComponent(state.window[0].toFixed(1) + "," + Math.max(1, state.window[1]).toFixed(1));
    }
    function url(k) {
      var f = frames[k];
      return data.base + encodeURIComponent(f[0]) + "/preview.jpg?frame=" + f[1] + "&size=" + data.size + windowArg();
    }
    function fetchImage(u) {
      var hit = cache.get(u);
      if (hit) { cache.delete(u); cache.set(u, hit); return hit; }  // most recent last
      var im = new Image();
      im.decoding = "async";
      im.src = u;
      cache.set(u, im);
      while (cache.size > CACHE_MAX) { cache.delete(cache.keys().next().value); }
      return im;
    }
    function prefetch() {
      for (var d = 1; d <= PREFETCH; d++) {
        if (state.i + d < frames.length) { fetchImage(url(state.i + d)); }
        if (state.i - d >= 0) { fetchImage(url(state.i - d)); }
      }
    }
    function labels() {
      var f = frames[state.i];
      var text = "Image " + (state.i + 1) + " / " + frames.length;
      if (f[2] > 1) { text += " · frame " + f[1] + " / " + f[2]; }
      if (f[4] !== null && f[4] !== undefined) { text += " · " + f[4].toFixed(1) + " mm"; }
      else if (f[3] !== null && f[3] !== undefined) { text += " · instance " + f[3]; }
      pos.textContent = text;
      var w = state.window;
      wl.textContent = w ? "W " + Math.round(w[1]) + " L " + Math.round(w[0]) : "W/L from the file";
      slider.value = String(state.i + 1);
      root.dataset.index = String(state.i + 1);
      root.dataset.window = windowArg();
    }
    function show() {
      var u = url(state.i);
      var im = fetchImage(u);
      var shown = state.i;
      function put() {
        if (shown !== state.i) { return; }  // moved on meanwhile
        img.src = im.src;
        img.alt = "Image " + (shown + 1) + " of " + frames.length;
        root.dataset.shown = String(shown + 1);
        root.dataset.src = im.src;
        if (!root.dataset.firstMs) { root.dataset.firstMs = String(Math.round(performance.now())); }  // since navigation
      }
      // The neighbours are fetched once this image is in: asked at the same time, they took the
      // server's threads from it and the first image of a page came three times later.
      if (im.complete && im.naturalWidth) { put(); prefetch(); }
      else { im.addEventListener("load", function () { put(); prefetch(); }, { once: true }); }
      labels();
    }
    function go(k) {
      k = Math.max(0, Math.min(frames.length - 1, k));
      if (k === state.i && img.src) { return; }
      state.i = k;
      show();
    }
    function transform() {
      img.style.transform = "translate(" + state.x + "px," + state.y + "px) scale(" + state.zoom + ")";
    }
    function zoom(factor) {
      state.zoom = Math.max(0.25, Math.min(16, state.zoom * factor));
      transform();
    }
    function setWindow(w, label) {
      state.window = w;
      select.value = label === undefined ? (w ? "custom" : "") : label;
      cache.clear();
      show();
    }
    function reset() {
      state.zoom = 1; state.x = 0; state.y = 0; transform();
      if (state.window) { setWindow(null, ""); }
    }
    function toggle(on) {
      if (on === undefined) { on = !state.timer; }
      if (state.timer) { clearInterval(state.timer); state.timer = null; }
      if (on) {
        var fps = Math.max(1, Math.min(60, parseInt(fpsInput.value, 10) || data.fps));
        state.timer = setInterval(function () { go(state.i + 1 < frames.length ? state.i + 1 : 0); }, 1000 / fps);
      }
      play.setAttribute("aria-pressed", on ? "true" : "false");
      play.textContent = on ? "❚❚ Stop" : "▶ Cine";
    }

    root.addEventListener("click", function (e) {
      var act = e.target.closest("[data-act]");
      if (!act) { return; }
      switch (act.dataset.act) {
        case "prev": go(state.i - 1); break;
        case "next": go(state.i + 1); break;
        case "play": toggle(); break;
        case "zoom-in": zoom(1.25); break;
        case "zoom-out": zoom(0.8); break;
        case "reset": reset(); break;
      }
    });
    slider.addEventListener("input", function () { go(parseInt(slider.value, 10) - 1); });
    fpsInput.addEventListener("change", function () { if (state.timer) { toggle(true); } });
    select.addEventListener("change", function () {
      var key = select.value;
      if (!key) { setWindow(null, ""); }
      else if (data.presets[key]) { setWindow(data.presets[key].slice(), key); }
    });
    stage.addEventListener("wheel", function (e) {
      e.preventDefault();
      if (e.ctrlKey) { zoom(e.deltaY < 0 ? 1.1 : 0.9); return; }
      go(state.i + (e.deltaY > 0 ? 1 : -1));
    }, { passive: false });
    document.addEventListener("keydown", function (e) {
      if (e.target.closest && e.target.closest("input, select, textarea") && e.target !== slider) { return; }
      var k = e.key, handled = true;
      if (k === "ArrowDown" || k === "ArrowRight") { go(state.i + 1); }
      else if (k === "ArrowUp" || k === "ArrowLeft") { go(state.i - 1); }
      else if (k === "PageDown") { go(state.i + 10); }
      else if (k === "PageUp") { go(state.i - 10); }
      else if (k === "Home") { go(0); }
      else if (k === "End") { go(frames.length - 1); }
      else if (k === " " && !e.target.closest("button")) { toggle(); }
      else if (k === "+" || k === "=") { zoom(1.25); }
      else if (k === "-") { zoom(0.8); }
      else if (k === "r" || k === "R") { reset(); }
      else { handled = false; }
      if (handled && e.target === slider && k.indexOf("Arrow") === 0) { e.preventDefault(); }
      else if (handled) { e.preventDefault(); }
    });

    // Drag: window/level (horizontal = width, vertical = level), shift or middle button = pan.
    var drag = null, pending = null, lastSent = 0;
    stage.addEventListener("pointerdown", function (e) {
      if (e.button === 2) { return; }
      stage.setPointerCapture(e.pointerId);
      var base = state.window || fileWindow || [128, 256];
      drag = { x: e.clientX, y: e.clientY, pan: e.shiftKey || e.button === 1, ox: state.x, oy: state.y,
               c: base[0], w: base[1] };
      e.preventDefault();
    });
    stage.addEventListener("pointermove", function (e) {
      if (!drag) { return; }
      var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (drag.pan) { state.x = drag.ox + dx; state.y = drag.oy + dy; transform(); return; }
      var scale = Math.max(1, drag.w / 256);
      pending = [drag.c + dy * scale, Math.max(1, drag.w + dx * scale * 2)];
      var now = Date.now();
      if (now - lastSent > WL_DELAY) { lastSent = now; setWindow(pending, "custom"); pending = null; }
    });
    function end() {
      if (drag && pending) { setWindow(pending, "custom"); }
      drag = null; pending = null;
    }
    stage.addEventListener("pointerup", end);
    stage.addEventListener("pointercancel", end);

    transform();
    show();
    stage.focus({ preventScroll: true });
  }

  // Loaded right after the viewer's markup: start at once when it is there.
  if (document.getElementById("sv") || document.readyState !== "loading") { start(); }
  else { document.addEventListener("DOMContentLoaded", start); }
}());
