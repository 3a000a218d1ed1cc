// The "Koopman" TensorBoard dashboard: one ES module, no build step, nothing from the network.
//
// TensorBoard loads it in an iframe whose base is /data/plugin/koopman/ and calls render().
// Every run, tag or number shown is inserted as text (textContent / SVG attributes), never as
// HTML.

const SVG = "http://www.w3.org/2000/svg";
const LEADING = 5; // eigenvalues drawn in the modulus-over-steps plot

const STYLE = `
:root { --fg: #212121; --muted: #616161; --bg: #fff; --panel: #f5f5f5; --line: #e0e0e0;
        --axis: #9e9e9e; --circle: #757575; --accent: #f57c00; --font: Roboto, sans-serif; }
:root.dark { --fg: #e0e0e0; --muted: #9e9e9e; --bg: #303030; --panel: #3a3a3a; --line: #555;
             --axis: #888; --circle: #aaa; --accent: #ffb74d; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 13px var(--font); }
.kk-root { display: flex; flex-direction: column; gap: 12px; padding: 16px; }
.kk-controls { display: flex; flex-wrap: wrap; align-items: center; gap: 16px;
               background: var(--panel); padding: 8px 12px; border-radius: 4px; }
.kk-controls label { color: var(--muted); display: flex; align-items: center; gap: 6px; }
select { font: inherit; color: var(--fg); background: var(--bg); border: 1px solid var(--line);
         border-radius: 3px; padding: 2px 4px; max-width: 320px; }
input[type=range] { width: 280px; accent-color: var(--accent); }
.kk-plots { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.kk-card { background: var(--bg); border: 1px solid var(--line); border-radius: 4px;
           padding: 8px; }
.kk-card h3 { margin: 0 0 4px; font-size: 13px; font-weight: 500; }
.kk-note { color: var(--muted); }
.kk-warn { color: var(--accent); }
svg text { fill: var(--muted); font: 11px var(--font); }
.axis { stroke: var(--axis); stroke-width: 1; }
.unit { fill: none; stroke: var(--circle); stroke-dasharray: 4 3; }
.eig { stroke: var(--fg); stroke-width: 0.6; fill-opacity: 0.85; cursor: pointer; }
.eig:hover { stroke-width: 2; }
.trace { fill: none; stroke-width: 1.5; }
.now { stroke: var(--accent); stroke-width: 1; pointer-events: none; }
.gap-dot { stroke: none; }
.now-label { fill: var(--accent); pointer-events: none; }
.event { cursor: pointer; }
.event line { stroke-width: 1; stroke-dasharray: 3 2; }
.event:hover line:not(.hit), .event:focus line:not(.hit) { stroke-width: 2; }
.event line.hit { stroke-dasharray: none; }
.kk-legend { display: flex; flex-wrap: wrap; gap: 10px; color: var(--muted); margin: 2px 0 4px; }
.kk-key { display: inline-flex; align-items: center; gap: 4px; }
.kk-swatch { display: inline-block; width: 14px; height: 3px; }
.kk-swatch.ev { width: 0; height: 0; border-left: 5px solid transparent;
                border-right: 5px solid transparent; border-top: 8px solid; }
#event-detail { white-space: pre-wrap; max-width: 420px; }
.kk-tiles { display: flex; flex-wrap: wrap; gap: 8px; }
.kk-tile { border: 1px solid var(--line); border-radius: 4px; padding: 4px; cursor: pointer;
           background: var(--bg); color: var(--fg); font: inherit; text-align: left; }
.kk-tile:hover, .kk-tile:focus { border-color: var(--accent); }
.kk-tile.selected { border: 2px solid var(--accent); padding: 3px; }
.kk-tile .name { display: block; max-width: 150px; overflow: hidden; text-overflow: ellipsis;
                 white-space: nowrap; }
.kk-tile .sub { display: block; color: var(--muted); font-size: 11px; }
.eig.selected { stroke: var(--accent); stroke-width: 2.5; }
.bar { fill: #1976d2; }
.bar.top { fill: var(--accent); }
.bar:hover { fill-opacity: 0.7; }
#modes-text { max-width: 640px; }
.kk-tip { position: fixed; pointer-events: none; background: var(--panel); color: var(--fg);
          border: 1px solid var(--line); border-radius: 3px; padding: 4px 6px;
          white-space: pre; display: none; box-shadow: 0 1px 3px rgba(0,0,0,.3); }
`;

const TRACE_COLOURS = ["#1976d2", "#f57c00", "#388e3c", "#d32f2f", "#7b1fa2"];

// Events of training (koopman_events/<kind> summaries): label and marker colour per kind. A
// Map, so that a kind read from the logs never reaches an object's prototype.
const EVENT_KINDS = new Map([
  ["early_stop", { label: "early stop", colour: "#d32f2f" }],
  ["restart", { label: "restart", colour: "#7b1fa2" }],
  ["jump_kept", { label: "jump kept", colour: "#388e3c" }],
  ["jump_undone", { label: "jump undone", colour: "#757575" }],
  ["pruning", { label: "pruning update", colour: "#8d6e63" }],
]);

function eventKind(kind) {
  return EVENT_KINDS.get(kind) || { label: kind, colour: "#0097a7" };
}

function showTip(tip, text, event) {
  tip.textContent = text;
  tip.style.display = "block";
  tip.style.left = `${event.clientX + 12}px`;
  tip.style.top = `${event.clientY + 12}px`;
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function isDark() {
  try {
    const body = window.parent && window.parent.document && window.parent.document.body;
    if (body && body.classList.contains("dark-mode")) return true;
  } catch (error) {
    // A parent from another origin: fall through to the system preference.
  }
  return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
}

async function getJson(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

// Residual -> colour: 0 blue, 0.5 and above red (a linear blend; residual is relative).
function residualColour(residual) {
  if (residual === null || residual === undefined) return "#9e9e9e";
  const t = Math.max(0, Math.min(1, residual / 0.5));
  const r = Math.round(25 + t * (211 - 25));
  const g = Math.round(118 + t * (47 - 118));
  const b = Math.round(210 + t * (47 - 210));
  return `rgb(${r},${g},${b})`;
}

function fmt(x) {
  if (x === null || x === undefined) return "n/a";
  const a = Math.abs(x);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? x.toExponential(3) : x.toFixed(4);
}

function drawPlane(svg, entry, tip, small = false, selection = null) {
  svg.replaceChildren();
  const size = Number(svg.getAttribute("width"));
  const pad = small ? 8 : 28;
  const eig = entry ? entry.eigenvalues : [];
  let extent = 1.1;
  for (const [re, im] of eig) extent = Math.max(extent, Math.abs(re) * 1.05, Math.abs(im) * 1.05);
  extent = Math.min(extent, 1e6);
  const scale = (size / 2 - pad) / extent;
  const cx = size / 2;
  const cy = size / 2;
  const X = (re) => cx + re * scale;
  const Y = (im) => cy - im * scale;
  svg.append(svgEl("line", { class: "axis", x1: pad / 2, y1: cy, x2: size - pad / 2, y2: cy }));
  svg.append(svgEl("line", { class: "axis", x1: cx, y1: pad / 2, x2: cx, y2: size - pad / 2 }));
  svg.append(svgEl("circle", { class: "unit", cx, cy, r: scale }));
  if (!small) {
    for (const t of [-1, 1]) {
      svg.append(svgEl("text", { x: X(t) + 3, y: cy + 12 }, String(t)));
      svg.append(svgEl("text", { x: cx + 4, y: Y(t) - 3 }, `${t}i`));
    }
    svg.append(svgEl("text", { x: size - pad, y: cy - 6 }, "Re"));
    svg.append(svgEl("text", { x: cx + 6, y: pad / 2 + 8 }, "Im"));
  }
  const amplitudes = entry ? entry.amplitudes : [];
  const known = amplitudes.filter((a) => a !== null && a > 0);
  const largest = known.length ? Math.max(...known) : 1;
  eig.forEach(([re, im], i) => {
    const amplitude = amplitudes[i];
    const residual = entry.residuals[i];
    // Area proportional to |amplitude| (relative to the largest), from 3 to 10 px radius.
    let radius = amplitude === null ? 4 : 3 + 7 * Math.sqrt(Math.max(amplitude, 0) / largest);
    if (small) radius /= 2;
    const chosen = selection && selection.index === i;
    const mark = svgEl("circle", {
      class: chosen ? "eig selected" : "eig", cx: X(re), cy: Y(im), r: radius.toFixed(2),
      fill: residualColour(residual), "data-index": i,
    });
    if (selection) mark.addEventListener("click", () => selection.onSelect(i));
    const modulus = Math.hypot(re, im);
    const text = `λ = ${fmt(re)} ${im < 0 ? "−" : "+"} ${fmt(Math.abs(im))}i\n` +
      `|λ| = ${fmt(modulus)}\n|amplitude| = ${fmt(amplitude)}\nresidual = ${fmt(residual)}` +
      (selection ? "\n(click: its mode across units)" : "");
    mark.append(svgEl("title", {}, text));
    mark.addEventListener("mousemove", (event) => showTip(tip, text, event));
    mark.addEventListener("mouseleave", () => { tip.style.display = "none"; });
    svg.append(mark);
  });
}

// The runs of consecutive steps at which eigenvalue k exists: a polyline each, so that a
// step without it leaves a gap instead of a straight line across.
function segments(steps, k) {
  const runs = [];
  let current = null;
  for (const s of steps) {
    if (s.eigenvalues.length > k) {
      if (!current) runs.push((current = []));
      current.push(s);
    } else {
      current = null;
    }
  }
  return runs;
}

// Events grouped by step (several callbacks may act at one epoch): [[step, [event, ...]], ...].
function eventsByStep(events) {
  const byStep = new Map();
  for (const event of events) {
    if (!byStep.has(event.step)) byStep.set(event.step, []);
    byStep.get(event.step).push(event);
  }
  return [...byStep.entries()].sort((a, b) => a[0] - b[0]);
}

// One line per event; one of a run in a subdirectory (e.g. <run>/pruning) names that run.
function eventText(step, events, run) {
  return [`step ${step}`, ...events.map((e) => `${eventKind(e.kind).label}: ${e.reason}` +
                                         (e.run && e.run !== run ? ` (${e.run})` : ""))]
    .join("\n");
}

function drawModuli(svg, steps, current, events, handlers) {
  svg.replaceChildren();
  const width = Number(svg.getAttribute("width"));
  const height = Number(svg.getAttribute("height"));
  const pad = { left: 40, right: 10, top: 22, bottom: 22 };
  if (!steps.length) return;
  let first = steps[0].step;
  let last = steps[steps.length - 1].step;
  for (const event of events) {
    first = Math.min(first, event.step);
    last = Math.max(last, event.step);
  }
  let top = 1.05;
  for (const s of steps) for (const [re, im] of s.eigenvalues.slice(0, LEADING)) {
    top = Math.max(top, Math.hypot(re, im));
  }
  top = Math.min(top, 1e6);
  const X = (step) => pad.left + (last === first ? 0.5 : (step - first) / (last - first)) *
    (width - pad.left - pad.right);
  const Y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);
  svg.append(svgEl("line", { class: "axis", x1: pad.left, y1: Y(0), x2: width - pad.right, y2: Y(0) }));
  svg.append(svgEl("line", { class: "axis", x1: pad.left, y1: Y(0), x2: pad.left, y2: Y(top) }));
  svg.append(svgEl("line", { class: "unit", x1: pad.left, y1: Y(1), x2: width - pad.right, y2: Y(1) }));
  svg.append(svgEl("text", { x: 4, y: Y(1) + 4 }, "1"));
  svg.append(svgEl("text", { x: 4, y: Y(0) }, "0"));
  svg.append(svgEl("text", { x: pad.left, y: height - 4 }, String(first)));
  svg.append(svgEl("text", { x: width - pad.right, y: height - 4, "text-anchor": "end" },
                   String(last)));
  svg.append(svgEl("text", { x: (pad.left + width - pad.right) / 2, y: height - 4,
                             "text-anchor": "middle" }, "step"));
  const drawn = [];
  for (let k = 0; k < LEADING; k++) {
    const runs = segments(steps, k);
    if (runs.length) drawn.push(k);
    for (const run of runs) {
      const title = svgEl("title", {}, `|λ${k + 1}| over steps ${run[0].step}–` +
                                       `${run[run.length - 1].step}`);
      if (run.length === 1) {  // a lone value between gaps: a dot, not an invisible line
        const s = run[0];
        const dot = svgEl("circle", { class: "trace gap-dot", cx: X(s.step).toFixed(1),
                                      cy: Y(Math.hypot(...s.eigenvalues[k])).toFixed(1), r: 2,
                                      fill: TRACE_COLOURS[k], "data-k": k });
        dot.append(title);
        svg.append(dot);
        continue;
      }
      const points = run.map((s) => `${X(s.step).toFixed(1)},` +
                                    `${Y(Math.hypot(...s.eigenvalues[k])).toFixed(1)}`);
      const line = svgEl("polyline", { class: "trace", points: points.join(" "),
                                       stroke: TRACE_COLOURS[k], "data-k": k });
      line.append(title);
      svg.append(line);
    }
  }
  if (current) {  // under the event marks, which take the pointer
    const x = X(current.step);
    svg.append(svgEl("line", { class: "now", x1: x, y1: Y(0), x2: x, y2: Y(top) }));
    const right = x > width - pad.right - 60;
    svg.append(svgEl("text", { class: "now-label", id: "now-label", x: right ? x - 4 : x + 4,
                               y: pad.top + 10, "text-anchor": right ? "end" : "start" },
                     `step ${current.step}`));
  }
  for (const [step, group] of eventsByStep(events)) {
    const x = X(step);
    const colour = eventKind(group[0].kind).colour;
    const text = eventText(step, group, handlers.run);
    const marker = svgEl("g", { class: "event", tabindex: 0, "data-step": step,
                                "data-kinds": group.map((e) => e.kind).join(" ") });
    marker.append(svgEl("line", { x1: x, y1: pad.top - 2, x2: x, y2: Y(0), stroke: colour }));
    // A wide invisible line over it: the mark is easy to hover and click.
    marker.append(svgEl("line", { class: "hit", x1: x, y1: pad.top - 12, x2: x, y2: Y(0),
                                  stroke: "transparent", "stroke-width": 10 }));
    marker.append(svgEl("path", { d: `M${(x - 5).toFixed(1)},${pad.top - 12} ` +
                                     `L${(x + 5).toFixed(1)},${pad.top - 12} ` +
                                     `L${x.toFixed(1)},${pad.top - 3} Z`, fill: colour }));
    marker.append(svgEl("title", {}, text));
    marker.addEventListener("mousemove", (event) => showTip(handlers.tip, text, event));
    marker.addEventListener("mouseleave", () => { handlers.tip.style.display = "none"; });
    marker.addEventListener("click", () => handlers.onEvent(step, text));
    marker.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") handlers.onEvent(step, text);
    });
    svg.append(marker);
  }
  return drawn;
}

function legendKey(colour, text, eventMark = false) {
  const key = el("span", { class: "kk-key" });
  const swatch = el("span", { class: eventMark ? "kk-swatch ev" : "kk-swatch" });
  swatch.style.setProperty(eventMark ? "border-top-color" : "background", colour);
  key.append(swatch, document.createTextNode(text));
  return key;
}

function drawLegend(legend, drawn, events) {
  legend.replaceChildren();
  for (const k of drawn) legend.append(legendKey(TRACE_COLOURS[k], `|λ${k + 1}|`));
  const kinds = [...new Set(events.map((e) => e.kind))];
  for (const kind of kinds) {
    const { label, colour } = eventKind(kind);
    legend.append(legendKey(colour, label, true));
  }
}

// The entry of `steps` whose step is nearest to `step` (the newest when `step` is null).
function nearestIndex(steps, step) {
  if (step === null || step === undefined) return steps.length - 1;
  let best = steps.length - 1;
  for (let i = 0; i < steps.length; i++) {
    if (Math.abs(steps[i].step - step) < Math.abs(steps[best].step - step)) best = i;
  }
  return best;
}

// The newest entry at or before `step` (a group not analysed at that step shows its latest
// spectrum then), or null.
function entryAtOrBefore(steps, step) {
  let found = null;
  for (const entry of steps) {
    if (entry.step <= step) found = entry;
    else break;
  }
  return found;
}

// The smallest number of units that together carry at least half of a mode.
function unitsForHalf(weights) {
  const sorted = [...weights].sort((a, b) => b - a);
  let total = 0;
  for (let i = 0; i < sorted.length; i++) {
    total += sorted[i];
    if (total >= 0.5) return i + 1;
  }
  return sorted.length;
}

function percent(x) {
  return `${(100 * x).toFixed(x >= 0.1 ? 0 : 1)}%`;
}

function unitName(column, size, units) {
  return size > 1 ? `units ${column * size}–${Math.min((column + 1) * size, units) - 1}` :
    `unit ${column}`;
}

// The modes view: for eigenvalue `index` of a spectrum `entry`, one bar per unit (column) of
// its /modes response `body`. Returns the line of text that goes with it.
function drawModes(svg, entry, body, index, tip) {
  svg.replaceChildren();
  svg.setAttribute("data-index", String(index));
  svg.setAttribute("data-bars", "0");
  if (!body || !body.weights.length) {
    return "No per-unit weights at this step: the logs are of an earlier keras-koopman, or " +
      "the group is not one layer with output units (a whole model, a transposed " +
      "convolution), is sketched, or did not move.";
  }
  if (index >= body.weights.length) {
    return `Per-unit weights are kept for the ${body.weights.length} leading eigenvalues ` +
      "(largest |λ| first); click one of them.";
  }
  const weights = body.weights[index];
  if (!weights) return "This mode's per-unit weights are unknown (a mode of zero norm).";
  const width = Number(svg.getAttribute("width"));
  const height = Number(svg.getAttribute("height"));
  const pad = { left: 40, right: 10, top: 8, bottom: 22 };
  const top = Math.max(...weights, 1e-12);
  const barWidth = (width - pad.left - pad.right) / weights.length;
  const Y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);
  svg.append(svgEl("line", { class: "axis", x1: pad.left, y1: Y(0), x2: width - pad.right,
                             y2: Y(0) }));
  svg.append(svgEl("line", { class: "axis", x1: pad.left, y1: Y(0), x2: pad.left, y2: Y(top) }));
  svg.append(svgEl("text", { x: 2, y: Y(top) + 8 }, percent(top)));
  svg.append(svgEl("text", { x: 2, y: Y(0) }, "0"));
  svg.append(svgEl("text", { x: pad.left, y: height - 4 }, "0"));
  svg.append(svgEl("text", { x: width - pad.right, y: height - 4, "text-anchor": "end" },
                   String(body.units - 1)));
  svg.append(svgEl("text", { x: (pad.left + width - pad.right) / 2, y: height - 4,
                             "text-anchor": "middle" },
                   body.unit_size > 1 ? `unit (bins of ${body.unit_size})` : "unit"));
  const order = weights.map((w, i) => i).sort((a, b) => weights[b] - weights[a]);
  const leaders = new Set(order.slice(0, 3));
  weights.forEach((w, i) => {
    const bar = svgEl("rect", {
      class: leaders.has(i) ? "bar top" : "bar", "data-unit": i,
      x: (pad.left + i * barWidth).toFixed(2), y: Y(w).toFixed(2),
      width: Math.max(barWidth - (barWidth > 3 ? 1 : 0), 0.5).toFixed(2),
      height: Math.max(Y(0) - Y(w), 0).toFixed(2),
    });
    const text = `${unitName(i, body.unit_size, body.units)}: ${percent(w)} of the mode`;
    bar.append(svgEl("title", {}, text));
    bar.addEventListener("mousemove", (event) => showTip(tip, text, event));
    bar.addEventListener("mouseleave", () => { tip.style.display = "none"; });
    svg.append(bar);
  });
  svg.setAttribute("data-bars", String(weights.length));
  const [re, im] = entry.eigenvalues[index];
  const half = unitsForHalf(weights);
  const named = order.slice(0, 3).map((i) => `${unitName(i, body.unit_size, body.units)} ` +
                                               `(${percent(weights[i])})`).join(", ");
  return `λ${index + 1} = ${fmt(re)} ${im < 0 ? "−" : "+"} ${fmt(Math.abs(im))}i, ` +
    `|λ| = ${fmt(Math.hypot(re, im))}, at step ${body.step}: ${half} of ${weights.length} ` +
    `${body.unit_size > 1 ? "bins" : "units"} carry half of this mode; most: ${named}. ` +
    "A mode at 1 is where the weights rest; the units that carry a mode inside the circle " +
    "are those still moving along it.";
}

export async function render() {
  document.documentElement.classList.toggle("dark", Boolean(isDark()));
  const style = document.createElement("style");
  style.textContent = STYLE;
  document.head.append(style);

  const root = el("div", { class: "kk-root" });
  const controls = el("div", { class: "kk-controls" });
  const runSelect = el("select", { id: "run" });
  const tagSelect = el("select", { id: "tag" });
  const slider = el("input", { id: "step", type: "range", min: "0", max: "0", value: "0" });
  const stepLabel = el("span", { id: "step-label" }, "");
  const runLabel = el("label", {}, "Run");
  runLabel.append(runSelect);
  const tagLabel = el("label", {}, "Group");
  tagLabel.append(tagSelect);
  const stepBox = el("label", {}, "Step");
  stepBox.append(slider, stepLabel);
  controls.append(runLabel, tagLabel, stepBox);

  const status = el("div", { id: "status", class: "kk-note" }, "Loading…");
  const plots = el("div", { class: "kk-plots" });
  const planeCard = el("div", { class: "kk-card" });
  planeCard.append(el("h3", {}, "Eigenvalues (dashed: unit circle; size: |amplitude|; " +
                                 "colour: residual, blue low to red high)"));
  const plane = svgEl("svg", { id: "plane", width: 420, height: 420, role: "img" });
  planeCard.append(plane);
  const moduliCard = el("div", { class: "kk-card" });
  moduliCard.append(el("h3", {}, `Moduli of the ${LEADING} leading eigenvalues over steps`));
  const moduli = svgEl("svg", { id: "moduli", width: 420, height: 220, role: "img" });
  const legend = el("div", { id: "moduli-legend", class: "kk-legend" });
  const eventDetail = el("div", { id: "event-detail", class: "kk-note" });
  const description = el("div", { id: "description", class: "kk-note" });
  moduliCard.append(moduli, legend, eventDetail, description);
  plots.append(planeCard, moduliCard);
  const modesCard = el("div", { class: "kk-card", id: "modes-card" });
  modesCard.append(el("h3", {}, "Modes across units: the share of the selected eigenvalue's " +
                                 "mode that each unit (output unit or channel) carries"));
  const modesPlot = svgEl("svg", { id: "modes", width: 640, height: 160, role: "img" });
  const modesText = el("div", { id: "modes-text", class: "kk-note" });
  modesCard.append(modesPlot, modesText);
  const overviewCard = el("div", { class: "kk-card", id: "overview-card" });
  const overviewTitle = el("h3", { id: "overview-title" }, "Every group");
  const tiles = el("div", { id: "overview", class: "kk-tiles" });
  overviewCard.append(overviewTitle, tiles);
  const tip = el("div", { class: "kk-tip", id: "tooltip" });
  root.append(controls, status, plots, modesCard, overviewCard, tip);
  document.body.append(root);

  let tags = {};
  let steps = [];
  let events = [];
  const cache = new Map(); // run \u0000 tag -> spectra response
  const key = (run, tag) => `${run}\u0000${tag}`;
  const modesCache = new Map(); // run \u0000 tag \u0000 step -> promise of a modes response
  let selected = 0; // the eigenvalue whose mode the modes view shows
  let latestModes = 0;
  let modesTimer = null;

  // The selected eigenvalue of `entry`, clamped to the ones it has.
  function selectedIndex(entry) {
    return entry ? Math.min(selected, Math.max(entry.eigenvalues.length - 1, 0)) : 0;
  }

  async function showModes(entry) {
    const load = ++latestModes;
    if (!entry) {
      modesPlot.replaceChildren();
      modesText.textContent = "";
      return;
    }
    const run = runSelect.value;
    const tag = tagSelect.value;
    const k = `${key(run, tag)}\u0000${entry.step}`;
    if (!modesCache.has(k)) {
      const params = new URLSearchParams({ run, tag, step: String(entry.step) });
      const request = getJson(`./modes?${params}`);
      modesCache.set(k, request);
      request.catch(() => modesCache.delete(k)); // a failed read is tried again next time
    }
    let body;
    try {
      body = await modesCache.get(k);
    } catch (error) {
      if (load !== latestModes) return;
      modesPlot.replaceChildren();
      modesText.textContent = `Could not load the modes: ${error.message}`;
      return;
    }
    if (load !== latestModes) return; // a later step, group or eigenvalue is shown by now
    modesText.textContent = drawModes(modesPlot, entry, body, selectedIndex(entry), tip);
    modesCard.setAttribute("data-step", String(entry.step));
  }

  // While the slider moves, the modes of the step it rests on (one read, not one per step).
  function showModesSoon(entry) {
    clearTimeout(modesTimer);
    modesTimer = setTimeout(() => showModes(entry), 150);
  }

  function drawSelectedPlane(entry) {
    drawPlane(plane, entry, tip, false, { index: selectedIndex(entry), onSelect: selectMode });
  }

  function selectMode(index) {
    selected = index;
    const entry = steps[Number(slider.value)];
    drawSelectedPlane(entry);
    clearTimeout(modesTimer);
    showModes(entry);
  }

  function onEvent(step, text) {
    eventDetail.textContent = text;
    slider.value = String(nearestIndex(steps, step));
    showStep();
  }

  function drawOverview(entry) {
    const run = runSelect.value;
    const step = entry ? entry.step : null;
    overviewTitle.textContent = step === null ? "Every group" :
      `Every group at step ${step} (click one to open it)`;
    tiles.replaceChildren();
    for (const tag of Object.keys(tags[run] || {}).sort()) {
      const body = cache.get(key(run, tag));
      const at = body && step !== null ? entryAtOrBefore(body.steps, step) : null;
      const tile = el("button", { class: "kk-tile", type: "button", "data-tag": tag,
                                  "data-step": at ? String(at.step) : "" });
      if (tag === tagSelect.value) tile.classList.add("selected");
      const small = svgEl("svg", { width: 150, height: 150, role: "img" });
      drawPlane(small, at, tip, true);
      const name = el("span", { class: "name", title: tag }, tag.replace(/^koopman\//, ""));
      const sub = el("span", { class: "sub" },
                     !body ? "not loaded" : at === null ? "no spectrum yet" :
                     at.step === step ? `${at.eigenvalues.length} eigenvalues` :
                     `${at.eigenvalues.length} eigenvalues, step ${at.step}`);
      tile.append(small, name, sub);
      tile.addEventListener("click", () => openGroup(tag, step));
      tiles.append(tile);
    }
  }

  function showStep() {
    const entry = steps[Number(slider.value)];
    stepLabel.textContent = entry ? `${entry.step} (${Number(slider.value) + 1}/${steps.length})` : "";
    drawSelectedPlane(entry);
    showModesSoon(entry);
    const drawn = drawModuli(moduli, steps, entry, events,
                             { tip, onEvent, run: runSelect.value }) || [];
    drawLegend(legend, drawn, events);
    plane.setAttribute("data-step", entry ? String(entry.step) : "");
    plane.setAttribute("data-count", entry ? String(entry.eigenvalues.length) : "0");
    drawOverview(entry);
  }

  async function fetchSpectra(run, tag) {
    const k = key(run, tag);
    if (!cache.has(k)) {
      const params = new URLSearchParams({ run, tag });
      cache.set(k, await getJson(`./spectra?${params}`));
    }
    return cache.get(k);
  }

  // Shows `tag` of the chosen run, at the step nearest to `step` (the newest when null).
  let latestLoad = 0;
  async function loadSpectra(step = null) {
    const run = runSelect.value;
    const tag = tagSelect.value;
    if (!run || !tag) return;
    const load = ++latestLoad;
    status.textContent = "Loading…";
    try {
      const body = await fetchSpectra(run, tag);
      if (load !== latestLoad) return; // a later choice is being shown
      steps = body.steps;
      const notes = [`${steps.length} steps`];
      if (body.downsampled) notes.push("downsampled");
      if (events.length) notes.push(`${events.length} events`);
      status.textContent = notes.join(", ");
      for (const warning of body.warnings) {
        status.append(el("div", { class: "kk-warn" }, warning));
      }
      description.textContent = tags[run][tag].description || "";
      slider.max = String(Math.max(steps.length - 1, 0));
      slider.value = String(Math.max(nearestIndex(steps, step), 0));
      showStep();
      root.setAttribute("data-ready", "true");
    } catch (error) {
      status.textContent = `Could not load the spectra: ${error.message}`;
    }
  }

  function openGroup(tag, step) {
    tagSelect.value = tag;
    selected = 0;
    eventDetail.textContent = "";
    loadSpectra(step);
  }

  // Everything of the chosen run: its events and every group's spectra (for the overview).
  async function loadRun() {
    const run = runSelect.value;
    eventDetail.textContent = "";
    events = [];
    try {
      const body = await getJson(`./events?${new URLSearchParams({ run })}`);
      if (run !== runSelect.value) return;
      events = body.events;
    } catch (error) {
      events = []; // an older plugin or a failed read: no markers, the spectra still show
    }
    await loadSpectra();
    if (run !== runSelect.value) return;
    const others = Object.keys(tags[run] || {}).filter((t) => t !== tagSelect.value);
    await Promise.all(others.map((t) => fetchSpectra(run, t).catch(() => null)));
    if (run === runSelect.value) {
      showStep();
      overviewCard.setAttribute("data-loaded", "true");
    }
  }

  function fillTags() {
    tagSelect.replaceChildren();
    for (const tag of Object.keys(tags[runSelect.value] || {}).sort()) {
      tagSelect.append(new Option(tag.replace(/^koopman\//, ""), tag));
    }
  }

  runSelect.addEventListener("change", () => {
    overviewCard.removeAttribute("data-loaded");
    selected = 0;
    steps = []; // no step carries over from another run: its newest is shown first
    fillTags();
    loadRun();
  });
  tagSelect.addEventListener("change", () => {
    const entry = steps[Number(slider.value)];
    openGroup(tagSelect.value, entry ? entry.step : null);
  });
  slider.addEventListener("input", showStep);

  try {
    tags = await getJson("./tags");
  } catch (error) {
    status.textContent = `Could not list the runs: ${error.message}`;
    return;
  }
  const runs = Object.keys(tags).sort();
  if (!runs.length) {
    status.textContent = "No Koopman spectra yet. Train with " +
      "kk.callbacks.KoopmanMonitor(log_dir=...) and point TensorBoard at that directory.";
    return;
  }
  for (const run of runs) runSelect.append(new Option(run, run));
  fillTags();
  await loadRun();
}
