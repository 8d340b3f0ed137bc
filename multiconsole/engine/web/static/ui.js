// multiconsole web UI: calls /api/v1 with the session cookie (same origin, so the engine's
// Origin check passes). Text from the engine is only ever set with textContent or .value;
// the only HTML inserted is the engine's own autoescaped table fragment.

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
const me = document.body.dataset.me || "";

async function call(method, url, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const reply = await fetch(url, init);
  if (reply.status === 401) {
    location.assign(`/ui/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new Error("logged out");
  }
  let data = null;
  const type = reply.headers.get("Content-Type") || "";
  if (type.includes("json") && reply.status !== 204) data = await reply.json();
  return { ok: reply.ok, status: reply.status, data, reply };
}

function errorOf(result) {
  const e = result.data && result.data.error;
  return e ? { field: e.field || "", message: e.message || e.reason } : { field: "", message: `error ${result.status}` };
}

function flash(text) {
  const box = $("#flash");
  if (box) box.textContent = text;
}

// --- generic buttons and forms (start, stop, users, permissions) ----------------------

document.addEventListener("click", async (ev) => {
  const button = ev.target.closest(".api-button");
  if (!button) return;
  button.disabled = true;
  flash("");
  try {
    const r = await call(button.dataset.method, button.dataset.url);
    if (!r.ok) {
      flash(errorOf(r).message);
      return;
    }
    if ($("#vm-rows")) await refreshRows();
    else location.reload();
  } finally {
    button.disabled = false;
  }
});

function showErrors(form, errors) {
  $$("[data-error-for]", form).forEach((p) => (p.textContent = ""));
  $$("[aria-invalid]", form).forEach((el) => el.removeAttribute("aria-invalid"));
  for (const { field, message } of errors) {
    const key = (field || "").split(".")[0];
    let target = key ? form.querySelector(`[data-error-for~="${CSS.escape(key)}"]`) : null;
    target = target || form.querySelector('[data-error-for=""]');
    if (!target) continue;
    target.textContent = target.textContent ? `${target.textContent} ${message}` : message;
    const control = key && form.elements.namedItem(key);
    if (control && control.setAttribute) control.setAttribute("aria-invalid", "true");
  }
}

function collect(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name || el.closest("[hidden]")) continue;
    if ("list" in el.dataset) {
      out[el.name] = out[el.name] || [];
      if (el.checked) out[el.name].push(el.value);
    } else if ("bool" in el.dataset) {
      out[el.name] = el.checked;
    } else if ("int" in el.dataset) {
      out[el.name] = el.value === "" ? null : Number(el.value);
    } else {
      out[el.name] = el.value === "" ? null : el.value;
    }
  }
  return out;
}

document.addEventListener("submit", async (ev) => {
  const form = ev.target.closest(".api-form");
  if (!form) return;
  ev.preventDefault();
  const body = Object.fromEntries(Object.entries(collect(form)).filter(([, v]) => v !== null));
  const r = await call(form.dataset.method, form.dataset.url, body);
  if (!r.ok) showErrors(form, [errorOf(r)]);
  else location.reload();
});

// --- the VM table: refreshed in place ---------------------------------------------------

const rows = $("#vm-rows");

async function refreshRows() {
  if (!rows) return;
  // Keep the keyboard focus where it was across the refresh.
  const focused = document.activeElement;
  const focusables = $$("button, a, [tabindex]", rows);
  const index = rows.contains(focused) ? focusables.indexOf(focused) : -1;
  const reply = await fetch(rows.dataset.refresh, { credentials: "same-origin", headers: { "X-Fragment": "1" } });
  if (reply.status === 401) {
    location.assign(`/ui/login?next=${encodeURIComponent(location.pathname)}`);
    return;
  }
  if (!reply.ok) return;
  const fresh = document.createElement("template");
  fresh.innerHTML = await reply.text(); // the engine's autoescaped fragment
  keepThumbs(fresh.content);
  rows.replaceChildren(fresh.content);
  if (index >= 0) {
    const again = $$("button, a, [tabindex]", rows)[index];
    if (again) again.focus();
  }
}

// A thumbnail already shown stays (no blank flash at each refresh); thumbnails are
// fetched again on their own, slower timer, and swapped in once loaded.
function keepThumbs(fresh) {
  const shown = new Map();
  for (const tr of $$("tr[data-vm]", rows)) {
    const img = tr.querySelector("td.thumb img");
    if (img && img.complete && img.naturalWidth) shown.set(tr.dataset.vm, img);
  }
  for (const tr of $$("tr[data-vm]", fresh)) {
    const img = tr.querySelector("td.thumb img");
    const old = shown.get(tr.dataset.vm);
    if (img && old) img.replaceWith(old);
  }
}

function refreshThumbs() {
  for (const img of $$("td.thumb img", rows)) {
    const next = new Image(img.width);
    next.alt = img.alt;
    next.onload = () => img.isConnected && img.replaceWith(next);
    const url = new URL(img.src);
    url.searchParams.set("t", String(Date.now()));
    next.src = url.href;
  }
}

if (rows) {
  setInterval(() => refreshRows().catch(() => {}), 4000);
  setInterval(refreshThumbs, 10000);
}

// --- the New/Edit VM and Template dialog ---------------------------------------------------

const dialog = $("#edit-dialog");
const form = $("#edit-form");
const VM_FIELDS = ["name", "cluster", "template", "os_type", "memory_mib", "vcpus"];
const TEMPLATE_FIELDS = ["name", "cluster", "os_type", "memory_mib", "vcpus", "description"];
const DISPLAY_FIELDS = [
  "video", "consoles", "monitors", "keyboard_layout", "copy_paste", "file_transfer",
  "disconnect_action", "allow_reconnect",
];
const DEFAULTS = {
  os_type: "other", memory_mib: 256, vcpus: 1, video: "qxl", consoles: ["spice", "vnc"], monitors: 1,
  keyboard_layout: null, copy_paste: true, file_transfer: true, disconnect_action: "LOCK_SCREEN",
  allow_reconnect: false, description: "", cluster: null, template: null,
  cdrom: "", disk_image: "", disk_size_gib: null, boot: "",
};
const DRIVE_CONTROLS = ["cdrom", "disk_image", "disk_size_gib", "boot"];

// The dialog's boot media controls as API fields (cdrom, disks, boot).
function driveFields(v) {
  const disks = v.disk_image ? [{ image: v.disk_image }] : v.disk_size_gib ? [{ size_gib: v.disk_size_gib }] : [];
  return { cdrom: v.cdrom || "", disks, boot: v.boot ? v.boot.split(",") : [] };
}
let state = null; // {kind: "vm"|"template", mode: "new"|"edit", key, initial, base}

function same(a, b) {
  const norm = (v) => (Array.isArray(v) ? JSON.stringify([...v].sort()) : JSON.stringify(v ?? null));
  return norm(a) === norm(b);
}

function fill(values) {
  for (const [name, value] of Object.entries(values)) {
    const controls = $$(`[name="${CSS.escape(name)}"]`, form);
    for (const el of controls) {
      if ("list" in el.dataset) el.checked = (value || []).includes(el.value);
      else if ("bool" in el.dataset) el.checked = !!value;
      else el.value = value ?? "";
    }
  }
}

function openDialog(kind, mode, values) {
  state = { kind, mode, key: values.name || null, base: null };
  const tokens = new Set([kind, `${kind}-${mode}`]);
  for (const el of $$("[data-only]", form)) {
    const show = el.dataset.only.split(" ").some((t) => tokens.has(t));
    el.hidden = !show;
  }
  form.elements.namedItem("cluster").disabled = mode === "edit";
  fill({ ...DEFAULTS, ...values });
  if (kind === "vm" && mode === "new" && !values.cluster) {
    const first = [...form.elements.namedItem("cluster").options].find((o) => !o.hidden && o.value);
    if (first) form.elements.namedItem("cluster").value = first.value;
  }
  state.initial = collect(form);
  const what = kind === "vm" ? "VM" : "template";
  $("#edit-title").textContent = mode === "new" ? `New ${what}` : `Edit ${what} ${values.name}`;
  $("#edit-submit").textContent = mode === "new" ? "Create" : "Save";
  $("#next-start-note").hidden = !(kind === "vm" && mode === "edit" && values.status && values.status !== "Down");
  const pinned = $("#pinned-note");
  pinned.hidden = !values.pinned_to_host;
  pinned.textContent = values.pinned_to_host
    ? `This VM's disks are on host ${values.pinned_to_host}: it starts only there.`
    : "";
  showErrors(form, []);
  dialog.showModal();
  $("#f-name").focus();
  checkRules();
}

document.addEventListener("click", (ev) => {
  const t = ev.target;
  if (t.closest("#new-vm")) openDialog("vm", "new", {});
  else if (t.closest("#new-template")) openDialog("template", "new", {});
  else if (t.closest("button.edit")) {
    const b = t.closest("button.edit");
    openDialog(b.dataset.kind, "edit", JSON.parse(b.dataset.edit));
  }
});

if (form) {
  $("#edit-cancel").addEventListener("click", () => dialog.close());
  // A template fills the dialog; what is left as the template has it, the VM inherits.
  $("#f-template").addEventListener("change", (ev) => {
    const option = ev.target.selectedOptions[0];
    if (!option || !option.dataset.template) {
      state.base = null;
      return;
    }
    const t = JSON.parse(option.dataset.template);
    const d = t.drives || { disks: [], boot: [] };
    const disk = d.disks[0];
    fill({
      os_type: t.os_type, memory_mib: t.memory_mib, vcpus: t.vcpus, ...t.display,
      cdrom: d.cdrom ? d.cdrom.name : "",
      disk_image: disk && disk.image ? disk.image.name : "",
      disk_size_gib: disk ? disk.size_gib : null,
      boot: (d.boot || []).join(","),
    });
    state.base = collect(form);
    checkRules();
  });
  form.addEventListener("input", () => scheduleCheck());
  form.addEventListener("change", () => scheduleCheck());
  form.addEventListener("submit", submit);
}

// The engine's rules, asked on every change: the UI knows none of them itself.
let timer = null;
let ruleErrors = [];
let checkSeq = 0;

function scheduleCheck() {
  clearTimeout(timer);
  timer = setTimeout(checkRules, 150);
}

async function checkRules() {
  const v = collect(form);
  const body = { os_type: v.os_type || "other", video: v.video, consoles: v.consoles, monitors: v.monitors };
  if (v.keyboard_layout) body.keyboard_layout = v.keyboard_layout;
  if (v.cluster) body.cluster = v.cluster;
  const seq = ++checkSeq;
  const r = await call("POST", "/api/v1/rules/check", body);
  if (seq !== checkSeq) return ruleErrors; // a newer check is on its way
  ruleErrors = r.ok ? r.data.map((x) => ({ field: x.field, message: x.reason })) : [errorOf(r)];
  showErrors(form, ruleErrors);
  $("#rules-state").textContent = ruleErrors.length
    ? `${ruleErrors.length} problem(s) with this configuration`
    : "configuration valid";
  form.dataset.rules = ruleErrors.length ? "invalid" : "valid";
  return ruleErrors;
}

function payload() {
  const v = collect(form);
  const fields = [...(state.kind === "vm" ? VM_FIELDS : TEMPLATE_FIELDS), ...DISPLAY_FIELDS];
  const out = {};
  const drives = driveFields(v);
  if (state.mode === "edit") {
    // Only what changed: a running VM keeps the rest, and the engine says what waits.
    for (const f of fields) if (f !== "cluster" && f !== "template" && !same(v[f], state.initial[f])) out[f] = v[f];
    if (DRIVE_CONTROLS.some((f) => !same(v[f], state.initial[f]))) {
      const before = driveFields(state.initial);
      for (const f of ["cdrom", "disks", "boot"]) if (!same(drives[f], before[f])) out[f] = drives[f];
      if (out.boot && !out.boot.length) delete out.boot;
    }
    return out;
  }
  for (const f of fields) {
    if (v[f] === null || v[f] === undefined) continue;
    if (state.base && !["name", "cluster", "template"].includes(f) && same(v[f], state.base[f])) continue;
    out[f] = v[f];
  }
  // A VM from a template keeps the template's media unless the dialog names others.
  const fromTemplate = state.base && DRIVE_CONTROLS.every((f) => same(v[f], state.base[f]));
  if (!fromTemplate) {
    if (drives.cdrom) out.cdrom = drives.cdrom;
    if (drives.disks.length) out.disks = drives.disks;
    if (drives.boot.length) out.boot = drives.boot;
  }
  return out;
}

async function submit(ev) {
  ev.preventDefault();
  clearTimeout(timer);
  const problems = await checkRules();
  if (problems.length) {
    $("#err-form").textContent = "Nothing was saved: fix the problems shown beside the fields.";
    const bad = form.querySelector("[aria-invalid=true]");
    if (bad) bad.focus();
    return;
  }
  const body = payload();
  const base = state.kind === "vm" ? "/api/v1/vms" : "/api/v1/templates";
  const r =
    state.mode === "new"
      ? await call("POST", base, body)
      : await call("PATCH", `${base}/${encodeURIComponent(state.key)}`, body);
  if (!r.ok) {
    showErrors(form, [errorOf(r)]);
    return;
  }
  dialog.close();
  location.reload();
}

// --- the console launcher ------------------------------------------------------------------

const ticketDialog = $("#ticket-dialog");
let countdown = null;

function askTakeOver(text) {
  return new Promise((resolve) => {
    const d = $("#takeover-dialog");
    $("#takeover-text").textContent = text;
    const done = (answer) => {
      d.close();
      resolve(answer);
    };
    $("#takeover-ok").onclick = () => done(true);
    $("#takeover-cancel").onclick = () => done(false);
    d.oncancel = () => resolve(false);
    d.showModal();
    $("#takeover-cancel").focus();
  });
}

function heldText(vm, protocol, holder) {
  return (
    `The ${protocol.toUpperCase()} console of ${vm} is in use by ${holder}. ` +
    "Taking it over disconnects them."
  );
}

function showTicket(what, password, ttl) {
  $("#ticket-title").textContent = "Console opened";
  $("#ticket-what").textContent = what;
  $("#ticket-password").value = password;
  $("#ticket-error").textContent = "";
  $("#ticket-copy").textContent = "Copy";
  const expires = Date.now() + ttl * 1000;
  clearInterval(countdown);
  const tick = () => {
    const left = Math.max(0, Math.round((expires - Date.now()) / 1000));
    $("#ticket-left").textContent = left ? String(left) : "0 (expired)";
    if (!left) clearInterval(countdown);
  };
  tick();
  countdown = setInterval(tick, 1000);
  if (!ticketDialog.open) ticketDialog.showModal();
}

function showLaunchError(message) {
  $("#ticket-title").textContent = "Console not opened";
  $("#ticket-what").textContent = "";
  $("#ticket-password").value = "";
  $("#ticket-left").textContent = "0";
  $("#ticket-error").textContent = message;
  if (!ticketDialog.open) ticketDialog.showModal();
}

const TTL = 120;

async function openVv(vm, protocol, takeOver) {
  const url = `/api/v1/vms/${encodeURIComponent(vm)}/consoles/${protocol}.vv?ttl=${TTL}&take_over=${takeOver}`;
  const reply = await fetch(url, { credentials: "same-origin" });
  if (!reply.ok) {
    const r = { status: reply.status, data: await reply.json().catch(() => null) };
    const err = errorOf(r);
    if (reply.status === 409 && err.field === "take_over" && !takeOver) {
      if (await askTakeOver(`${err.message}.`)) return openVv(vm, protocol, true);
      return;
    }
    showLaunchError(err.message);
    return;
  }
  const text = await reply.text();
  const match = /^password=(.*)$/m.exec(text);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type: "application/x-virt-viewer" }));
  link.download = `${vm}-${protocol}.vv`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  showTicket(
    `${protocol.toUpperCase()} console of ${vm}: open the downloaded ${link.download} with remote-viewer.`,
    match ? match[1] : "",
    TTL,
  );
}

document.addEventListener("click", async (ev) => {
  const el = ev.target.closest(".launch");
  if (!el) return;
  const { vm, protocol, kind, holder } = el.dataset;
  const heldByOther = holder && holder !== me;
  if (kind === "browser") {
    if (el.getAttribute("aria-disabled") === "true") {
      ev.preventDefault();
      return;
    }
    if (!heldByOther) return; // the link opens the noVNC page
    ev.preventDefault();
    if (await askTakeOver(heldText(vm, protocol, holder))) {
      window.open(`${el.getAttribute("href")}?take_over=true`, "_blank", "noopener");
    }
    return;
  }
  let takeOver = false;
  if (heldByOther) {
    if (!(await askTakeOver(heldText(vm, protocol, holder)))) return;
    takeOver = true;
  }
  el.disabled = true;
  try {
    await openVv(vm, protocol, takeOver);
  } catch (e) {
    showLaunchError(String(e));
  } finally {
    el.disabled = false;
  }
});

if (ticketDialog) {
  $("#ticket-close").addEventListener("click", () => ticketDialog.close());
  ticketDialog.addEventListener("close", () => clearInterval(countdown));
  $("#ticket-copy").addEventListener("click", async () => {
    const field = $("#ticket-password");
    try {
      await navigator.clipboard.writeText(field.value);
    } catch {
      field.select(); // no clipboard API (plain HTTP from another machine): the old way
      document.execCommand("copy");
    }
    $("#ticket-copy").textContent = "Copied";
  });
}

// --- paste as keystrokes: POST /api/v1/vms/{vm}/keys ---------------------------------------

const keysDialog = $("#keys-dialog");

async function sendKeys(vm, body, button) {
  $("#keys-error").textContent = "";
  $("#keys-done").textContent = body.text !== undefined ? "typing…" : "";
  button.disabled = true;
  try {
    const r = await call("POST", `/api/v1/vms/${encodeURIComponent(vm)}/keys`, body);
    if (!r.ok) {
      $("#keys-done").textContent = "";
      $("#keys-error").textContent = errorOf(r).message;
      return;
    }
    $("#keys-done").textContent =
      body.text !== undefined
        ? `Typed ${r.data.characters} characters (layout ${r.data.keyboard_layout}).`
        : `Pressed ${body.keys.join(", ")}.`;
  } finally {
    button.disabled = false;
  }
}

if (keysDialog) {
  document.addEventListener("click", (ev) => {
    const el = ev.target.closest(".type-keys");
    if (!el) return;
    keysDialog.dataset.vm = el.dataset.vm;
    $("#keys-what").textContent = `Into ${el.dataset.vm}, as if typed on its keyboard.`;
    $("#keys-error").textContent = "";
    $("#keys-done").textContent = "";
    keysDialog.showModal();
    $("#keys-text").focus();
  });
  $("#keys-send").addEventListener("click", (ev) => {
    const text = $("#keys-text").value;
    if (!text) {
      $("#keys-error").textContent = "Nothing to type.";
      return;
    }
    sendKeys(keysDialog.dataset.vm, { text }, ev.currentTarget);
  });
  $$(".keys-combo", keysDialog).forEach((b) =>
    b.addEventListener("click", (ev) => sendKeys(keysDialog.dataset.vm, { keys: [b.dataset.keys] }, ev.currentTarget)),
  );
  $("#keys-close").addEventListener("click", () => keysDialog.close());
}

// --- images: upload with progress (XMLHttpRequest reports upload progress; fetch does not) ---

const uploadForm = $("#upload-form");
if (uploadForm) {
  uploadForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const file = $("#u-file").files[0];
    const error = $("#u-error");
    error.textContent = "";
    if (!file) {
      error.textContent = "Choose a file to upload.";
      return;
    }
    const params = new URLSearchParams({ name: $("#u-name").value || file.name });
    if ($("#u-format").value) params.set("format", $("#u-format").value);
    const bar = $("#u-progress");
    const percent = $("#u-percent");
    const button = $("#u-submit");
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/v1/images?${params}`);
    xhr.withCredentials = true;
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      bar.value = Math.floor((100 * e.loaded) / e.total);
      percent.textContent = `${bar.value}%`;
    });
    xhr.addEventListener("load", () => {
      button.disabled = false;
      if (xhr.status === 201) {
        percent.textContent = "uploaded and checked";
        location.reload();
        return;
      }
      let message = `error ${xhr.status}`;
      try {
        const e = JSON.parse(xhr.responseText).error;
        message = e.message || e.reason || message;
      } catch (_) { /* not JSON */ }
      error.textContent = message;
      bar.hidden = true;
      percent.textContent = "";
    });
    xhr.addEventListener("error", () => {
      button.disabled = false;
      error.textContent = "The upload failed: the engine could not be reached.";
    });
    bar.hidden = false;
    bar.value = 0;
    button.disabled = true;
    xhr.send(file);
  });
}
