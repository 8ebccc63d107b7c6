// Dolmen's only script besides htmx. Pages work without it; it adds conveniences.
"use strict";
document.addEventListener("submit", function (event) {
  // <form data-confirm="..."> asks before a destructive action.
  var form = event.target;
  var message = form.getAttribute && form.getAttribute("data-confirm");
  if (message && !window.confirm(message)) { event.preventDefault(); event.stopPropagation(); }
}, true);

// == Browse and upload (webapp/browse.py, webapp/upload.py) ====================================
(function () {
  // The study list's "tick every study of this page" box.
  document.addEventListener("change", function (event) {
    var box = event.target, name = box.getAttribute && box.getAttribute("data-pick-all");
    if (!name) return;
    var table = box.closest("table");
    table.querySelectorAll('input[type=checkbox][name="' + name + '"]').forEach(function (b) { b.checked = box.checked; });
  });

  // A list row opens its page when clicked anywhere; the links inside work without this.
  document.addEventListener("click", function (event) {
    var row = event.target.closest && event.target.closest("tr[data-href]");
    if (!row || event.target.closest("a, button, input, select, label, summary")) return;
    if (event.ctrlKey || event.metaKey) window.open(row.getAttribute("data-href"));
    else window.location.href = row.getAttribute("data-href");
  });

  // Filters sent by htmx leave their empty fields out of the URL, as a bookmark should.
  document.addEventListener("htmx:configRequest", function (event) {
    var data = event.detail.formData;
    if (event.detail.verb !== "get" || !data) return;
    var empty = [];
    data.forEach(function (value, key) { if (value === "") empty.push(key); });
    empty.forEach(function (key) { if (data.getAll(key).every(function (v) { return v === ""; })) delete event.detail.parameters[key]; });
  });

  // A study date preset and a typed range exclude each other (captured before htmx sends).
  document.addEventListener("change", function (event) {
    var field = event.target, form = field.form;
    if (!form) return;
    if (field.hasAttribute("data-date-preset") && field.value) {
      ["from", "to"].forEach(function (name) { if (form.elements[name]) form.elements[name].value = ""; });
    } else if ((field.name === "from" || field.name === "to") && field.value) {
      var preset = form.querySelector("[data-date-preset]");
      if (preset) preset.value = "";
    }
  }, true);

  // The frame slider moves the image while it is dragged; htmx updates the rest on release.
  document.addEventListener("input", function (event) {
    var slider = event.target;
    if (!slider.matches || !slider.matches("[data-frame-slider]")) return;
    var viewer = slider.closest(".viewer");
    var image = viewer && viewer.querySelector("img[data-preview-base]");
    var output = viewer && viewer.querySelector("output");
    if (output) output.textContent = slider.value;
    if (image) image.src = image.getAttribute("data-preview-base") + "&frame=" + encodeURIComponent(slider.value);
  });

  // Arrow keys page through frames, Page Up / Page Down through the instances of a series.
  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey || event.target.closest("input, select, textarea")) return;
    var link = document.querySelector('a[data-key="' + event.key + '"]');
    if (link) { event.preventDefault(); link.click(); }
  });

  var form = document.querySelector("form[data-upload]");
  if (form) initUpload(form);

  // Upload: many files, folders and ZIP files in batches, with a progress bar. Without this the
  // form is a plain multipart POST of the same field.
  function initUpload(form) {
    var zone = form.querySelector("[data-dropzone]");
    var progress = document.querySelector("[data-progress]");
    var bar = progress.querySelector("[data-progress-bar]");
    var text = progress.querySelector("[data-progress-text]");
    var title = progress.querySelector("[data-progress-title]");
    var stop = progress.querySelector("[data-upload-stop]");
    var results = document.getElementById("upload-results");
    var tbody = results.querySelector("#upload-table tbody");
    var template = document.getElementById("upload-row-template");
    var batchFiles = parseInt(form.getAttribute("data-batch-files"), 10) || 20;
    var batchBytes = parseInt(form.getAttribute("data-batch-bytes"), 10) || 64 * 1024 * 1024;
    var skipStored = form.getAttribute("data-skip-stored") === "true";
    var inputs = Array.prototype.slice.call(form.querySelectorAll("input[type=file]"));
    var busy = false, stopped = false, failed = [];

    form.addEventListener("submit", function (event) { event.preventDefault(); start(selected()); });
    inputs.forEach(function (input) { input.addEventListener("change", function () { start(selected()); }); });
    stop.addEventListener("click", function () {
      if (busy) { stopped = true; stop.disabled = true; title.textContent = "Stopping after this batch…"; }
      else if (failed.length) { retry(); }
    });
    ["dragenter", "dragover"].forEach(function (kind) {
      zone.addEventListener(kind, function (event) { event.preventDefault(); zone.classList.add("dragover"); });
    });
    zone.addEventListener("dragleave", function () { zone.classList.remove("dragover"); });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("dragover");
      collect(event.dataTransfer).then(start);
    });
    // A file dropped beside the zone must not make the browser leave the page to open it.
    document.addEventListener("dragover", function (event) { event.preventDefault(); });
    document.addEventListener("drop", function (event) { event.preventDefault(); });

    function selected() {
      var items = [];
      inputs.forEach(function (input) {
        Array.prototype.forEach.call(input.files, function (file) {
          items.push({ file: file, name: file.webkitRelativePath || file.name });
        });
      });
      return items;
    }

    function collect(transfer) {
      var entries = [];
      Array.prototype.forEach.call(transfer.items || [], function (item) {
        var entry = item.webkitGetAsEntry && item.webkitGetAsEntry();
        if (entry) entries.push(entry);
      });
      if (!entries.length) {
        return Promise.resolve(Array.prototype.map.call(transfer.files, function (f) { return { file: f, name: f.name }; }));
      }
      var out = [];
      return Promise.all(entries.map(function (entry) { return walk(entry, out); })).then(function () { return out; });
    }

    function walk(entry, out) {
      if (entry.isFile) {
        return new Promise(function (resolve) {
          entry.file(function (file) { out.push({ file: file, name: entry.fullPath.replace(/^\//, "") }); resolve(); },
                     function () { resolve(); });
        });
      }
      if (!entry.isDirectory) return Promise.resolve();
      var reader = entry.createReader(), found = [];
      return new Promise(function (resolve) {
        (function more() {  // readEntries answers in pieces of about 100
          reader.readEntries(function (piece) {
            if (!piece.length) {
              Promise.all(found.map(function (e) { return walk(e, out); })).then(resolve);
              return;
            }
            found = found.concat(Array.prototype.slice.call(piece));
            more();
          }, function () { resolve(); });
        })();
      });
    }

    function start(items) {
      if (busy || !items.length) return;
      busy = true; stopped = false; failed = [];
      stop.disabled = false; stop.hidden = false; stop.textContent = "Stop";
      results.hidden = false; progress.hidden = false;
      var state = { count: items.length, done: 0, total: bytes(items), doneBytes: 0 };
      title.textContent = "Uploading…";
      show(state, 0);
      (skipStored ? skipKnown(items, state) : Promise.resolve(items))
        .then(function (todo) { return sendAll(batches(todo), state); })
        .then(function () { finish(state); }, function (error) { title.textContent = "Upload stopped: " + error; busy = false; });
      inputs.forEach(function (input) { input.value = ""; });
    }

    function retry() {
      var items = failed;
      Array.prototype.forEach.call(tbody.querySelectorAll("tr[data-retry]"), function (tr) { tr.remove(); });
      recount();
      start(items);
    }

    function finish(state) {
      busy = false;
      var counts = recount();
      title.textContent = (stopped ? "Stopped: " : "Done: ") + counts.stored + " stored, " + counts.duplicate +
        " already stored, " + counts.rejected + " rejected" + (counts.failed ? ", " + counts.failed + " not uploaded" : "");
      show(state, 0);
      if (failed.length) { stop.disabled = false; stop.textContent = "Retry " + failed.length + " failed"; }
      else { stop.hidden = true; }
    }

    function bytes(items) { return items.reduce(function (n, it) { return n + it.file.size; }, 0); }

    function batches(items) {
      var out = [], current = [], size = 0;
      items.forEach(function (it) {
        if (current.length && (current.length >= batchFiles || size + it.file.size > batchBytes)) {
          out.push(current); current = []; size = 0;
        }
        current.push(it); size += it.file.size;
      });
      if (current.length) out.push(current);
      return out;
    }

    // Ask the index which files are there already, from each file's (0002,0003) Media Storage
    // SOP Instance UID, so that resuming a large upload does not send them again.
    function skipKnown(items, state) {
      var chunks = [];
      for (var i = 0; i < items.length; i += 500) chunks.push(items.slice(i, i + 500));
      var keep = [];
      return chunks.reduce(function (chain, chunk) {
        return chain.then(function () {
          if (stopped) { keep = keep.concat(chunk); return null; }
          return Promise.all(chunk.map(readUid)).then(function (uids) {
            var data = new FormData(), byUid = {};
            chunk.forEach(function (it, k) {
              if (uids[k]) { data.append("uid", uids[k]); data.append("name", it.name); byUid[uids[k]] = it; }
            });
            if (!Object.keys(byUid).length) { keep = keep.concat(chunk); return null; }
            return request(form.getAttribute("data-check"), data, null).then(function (html) {
              var skipped = {};
              rows(html).forEach(function (tr) {
                var uid = tr.getAttribute("data-uid");
                if (uid && byUid[uid]) { skipped[uid] = true; tbody.appendChild(tr); state.done += 1; state.doneBytes += byUid[uid].file.size; }
              });
              chunk.forEach(function (it, k) { if (!skipped[uids[k]]) keep.push(it); });
              recount(); show(state, 0);
            }, function () { keep = keep.concat(chunk); });
          });
        });
      }, Promise.resolve()).then(function () { return keep; });
    }

    function readUid(item) {
      if (/\.zip$/i.test(item.name) || !item.file.slice) return Promise.resolve("");
      return item.file.slice(0, 65536).arrayBuffer().then(metaUid, function () { return ""; });
    }

    function metaUid(buffer) {
      var b = new Uint8Array(buffer), view = new DataView(buffer), pos = 132;
      if (b.length < 140 || String.fromCharCode(b[128], b[129], b[130], b[131]) !== "DICM") return "";
      var long = ["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"];
      while (pos + 8 <= b.length && view.getUint16(pos, true) === 2) {
        var vr = String.fromCharCode(b[pos + 4], b[pos + 5]), start, length;
        if (long.indexOf(vr) >= 0) { length = view.getUint32(pos + 8, true); start = pos + 12; }
        else { length = view.getUint16(pos + 6, true); start = pos + 8; }
        if (view.getUint16(pos + 2, true) === 3 && start + length <= b.length) {
          var uid = String.fromCharCode.apply(null, b.subarray(start, start + length)).replace(/[\0 ]+$/, "");
          return /^[0-9.]{1,64}$/.test(uid) ? uid : "";
        }
        pos = start + length;
      }
      return "";
    }

    function sendAll(list, state) {
      var index = 0;
      function next() {
        if (stopped || index >= list.length) return Promise.resolve();
        var batch = list[index++];
        return send(batch, state)
          .catch(function (error) {  // one more try for a dropped connection or a server error
            if (!error.retry) throw error;
            return new Promise(function (resolve) { setTimeout(resolve, 1000); }).then(function () { return send(batch, state); });
          })
          .catch(function (error) {  // give up on this batch, go on with the next
            failed = failed.concat(batch);
            batch.forEach(function (it) { addRow(it.name, "Upload failed: " + error.message); });
            state.done += batch.length; state.doneBytes += bytes(batch);
            recount(); show(state, 0);
          })
          .then(next);
      }
      return next();
    }

    function send(batch, state) {
      var data = new FormData();
      batch.forEach(function (it) { data.append("files", it.file, it.name); });
      return request(form.action, data, function (loaded) { show(state, loaded); }).then(function (html) {
        rows(html).forEach(function (tr) { tbody.appendChild(tr); });
        state.done += batch.length; state.doneBytes += bytes(batch);
        recount(); show(state, 0);
      });
    }

    function request(url, data, onProgress) {
      return new Promise(function (resolve, reject) {
        var xhr = new XMLHttpRequest();
        xhr.open("POST", url);
        xhr.setRequestHeader("HX-Request", "true");  // the results partial, not the whole page
        if (onProgress) xhr.upload.onprogress = function (event) { onProgress(event.loaded); };
        xhr.onload = function () {
          if (xhr.status === 200) { resolve(xhr.responseText); return; }
          var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
          var detail = doc.querySelector(".alert p, .alert");
          reject({ retry: xhr.status >= 500, message: "HTTP " + xhr.status + (detail ? ": " + detail.textContent.trim() : "") });
        };
        xhr.onerror = function () { reject({ retry: true, message: "the connection to the server failed" }); };
        xhr.send(data);
      });
    }

    function rows(html) {
      var doc = new DOMParser().parseFromString(html, "text/html");
      return Array.prototype.map.call(doc.querySelectorAll("#upload-table tbody tr"), function (tr) {
        return document.importNode(tr, true);
      });
    }

    function addRow(name, reason) {
      var tr = template.content.firstElementChild.cloneNode(true);
      tr.querySelector(".file").textContent = name;
      tr.querySelector(".reason").textContent = reason;
      tr.setAttribute("data-retry", "");
      tbody.appendChild(tr);
    }

    function recount() {
      var counts = { stored: 0, duplicate: 0, rejected: 0, failed: 0 };
      Array.prototype.forEach.call(tbody.querySelectorAll("tr[data-status]"), function (tr) {
        var status = tr.getAttribute("data-status");
        counts[status] = (counts[status] || 0) + 1;
      });
      Object.keys(counts).forEach(function (key) {
        var el = results.querySelector('[data-count="' + key + '"]');
        if (el) el.textContent = counts[key];
        var wrap = results.querySelector('[data-count-badge="' + key + '"]');
        if (wrap) wrap.hidden = !counts[key];
      });
      return counts;
    }

    function show(state, inflight) {
      var sent = Math.min(state.total, state.doneBytes + inflight);
      bar.value = state.total ? Math.round(1000 * sent / state.total) : 1000 * state.done / Math.max(1, state.count);
      text.textContent = state.done + " / " + state.count + " files · " + size(sent) + " / " + size(state.total);
    }

    function size(n) {
      var units = ["B", "KB", "MB", "GB", "TB"], i = 0;
      while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
      return (i ? n.toFixed(1) : n) + " " + units[i];
    }
  }
})();
