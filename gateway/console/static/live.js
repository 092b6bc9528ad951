// One event stream per browser (GET /api/v1/events, server-sent events fed by
// what the gateway commits). Pages subscribe to event names while they are shown.

const KINDS = ["alarm", "device", "command", "telemetry", "emergency", "work_order"];
const subscribers = new Map(KINDS.map((k) => [k, new Set()]));
let source = null;
let onState = () => {};

export function onConnectionState(fn) {
  onState = fn;
}

export function connect() {
  if (source) return;
  source = new EventSource("/api/v1/events", { withCredentials: true });
  source.onopen = () => onState("live");
  source.onerror = () => onState(source && source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  for (const kind of KINDS) {
    source.addEventListener(kind, (ev) => {
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch {
        return;
      }
      for (const fn of subscribers.get(kind)) fn(data);
    });
  }
}

export function disconnect() {
  if (source) source.close();
  source = null;
  onState("off");
}

// subscribe("alarm", fn) -> unsubscribe function
export function subscribe(kind, fn) {
  subscribers.get(kind).add(fn);
  return () => subscribers.get(kind).delete(fn);
}
