// The browser console page (templates/console.html): what it opens comes in the body's data-*
// attributes (no inline script, so the Content-Security-Policy can forbid them all).
const page = document.body.dataset;
const status = document.getElementById("status");
const vm = page.vm;
const takeOver = page.takeOver === "true";
async function connect() {
  const { default: RFB } = await import(`${page.novnc}/core/rfb.js`);
  const reply = await fetch(`${page.api}/vms/${encodeURIComponent(vm)}/consoles/vnc/proxy-ticket`, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({take_over: takeOver}),
    credentials: "same-origin",
  });
  const body = await reply.json();
  if (!reply.ok) {
    status.textContent = body.error ? body.error.message : `error ${reply.status}`;
    document.body.dataset.state = "refused";
    return;
  }
  // A page served over https talks to the proxy over wss only (the engine says which).
  if (location.protocol === "https:" && !body.url.startsWith("wss:")) {
    status.textContent = "refused: the console proxy does not speak wss";
    document.body.dataset.state = "refused";
    return;
  }
  const rfb = new RFB(document.getElementById("screen"), body.url, {
    credentials: {password: body.password},
    wsProtocols: ["binary"],
    // Taking over asks QEMU for an exclusive session: other VNC clients are dropped.
    shared: !takeOver,
  });
  rfb.scaleViewport = true;
  rfb.viewOnly = document.getElementById("viewonly").checked;
  document.getElementById("viewonly").onchange = (e) => { rfb.viewOnly = e.target.checked; };
  document.getElementById("cad").onclick = () => rfb.sendCtrlAltDel();
  rfb.addEventListener("connect", () => {
    status.textContent = "connected";
    document.body.dataset.state = "connected";
  });
  rfb.addEventListener("disconnect", (e) => {
    status.textContent = e.detail.clean ? "disconnected" : "connection lost";
    document.body.dataset.state = "disconnected";
  });
  rfb.addEventListener("securityfailure", (e) => {
    status.textContent = `refused: ${e.detail.reason || "wrong or expired password"}`;
    document.body.dataset.state = "refused";
  });
}
// Paste as keystrokes: the engine types the text through the host (any console, no guest agent).
const paste = document.getElementById("paste");
const pasteStatus = document.getElementById("paste-status");
document.getElementById("paste-toggle").onclick = (e) => {
  paste.hidden = !paste.hidden;
  e.target.setAttribute("aria-expanded", String(!paste.hidden));
  if (!paste.hidden) document.getElementById("paste-text").focus();
};
paste.onsubmit = async (e) => {
  e.preventDefault();
  const text = document.getElementById("paste-text").value;
  if (!text) return;
  const send = document.getElementById("paste-send");
  send.disabled = true;
  pasteStatus.textContent = "typing…";
  try {
    const reply = await fetch(`${page.api}/vms/${encodeURIComponent(vm)}/keys`, {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({text}),
      credentials: "same-origin",
    });
    const body = await reply.json().catch(() => ({}));
    pasteStatus.textContent = reply.ok
      ? `typed ${body.characters} characters (layout ${body.keyboard_layout})`
      : (body.error ? body.error.message : `error ${reply.status}`);
    paste.dataset.state = reply.ok ? "typed" : "refused";
  } catch (err) {
    pasteStatus.textContent = String(err);
    paste.dataset.state = "refused";
  } finally {
    send.disabled = false;
  }
};
connect().catch((e) => { status.textContent = String(e); document.body.dataset.state = "refused"; });
