// Proxlab default theme: the VM console page (templates/console.html), noVNC from /static/vendor
// (pinned by package-lock.json, copied by dev/build-assets). Loaded as a module (noVNC is ES modules).
//
// The page fetches a one-time connect token (POST data-token-path with the CSRF token) and opens
// data-ws-path&token=… with the `binary` subprotocol (the relay never base64-encodes). The portal does the
// VNC authentication with Proxmox itself: noVNC sees security type "None" and never gets a Proxmox ticket or
// password.
const root = document.getElementById("console-page");
const stateEl = document.getElementById("conn-state");
const msgEl = document.getElementById("conn-message");
const again = document.getElementById("conn-reconnect");
const cad = document.getElementById("conn-ctrlaltdel");

function setState(state, text) {
  stateEl.setAttribute("data-state", state);
  stateEl.textContent = state;
  msgEl.textContent = text || "";
}

let RFB = null;
let rfb = null;

async function connect() {
  again.hidden = true;
  try {
    if (!RFB) {
      RFB = (await import(root.dataset.rfbUrl)).default;
    }
    setState("connecting", "asking for a connect token");
    const r = await fetch(root.dataset.tokenPath, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": root.dataset.csrf },
      body: JSON.stringify({ purpose: "console" }),
    });
    if (!r.ok) { throw new Error("connect token refused (" + r.status + ")"); }
    const t = await r.json();
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const sep = root.dataset.wsPath.includes("?") ? "&" : "?";
    const url = proto + "//" + location.host + root.dataset.wsPath + sep + "token=" + encodeURIComponent(t.token);
    rfb = new RFB(document.getElementById("screen"), url, { wsProtocols: ["binary"] });
    rfb.scaleViewport = true;
    rfb.addEventListener("connect", () => { setState("connected", ""); cad.hidden = false; });
    rfb.addEventListener("disconnect", (e) => {
      setState("closed", e.detail.clean ? "console closed" : "the console connection was lost");
      cad.hidden = true;
      again.hidden = false;
    });
    rfb.addEventListener("securityfailure", (e) => setState("error", e.detail.reason || "refused"));
  } catch (e) {
    setState("error", e.message || String(e));
    again.hidden = false;
  }
}

if (root) {
  again.addEventListener("click", () => connect());
  cad.addEventListener("click", () => { if (rfb) { rfb.sendCtrlAltDel(); } });
  connect();
}
