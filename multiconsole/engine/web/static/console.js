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
connect().catch((e) => { status.textContent = String(e); document.body.dataset.state = "refused"; });
