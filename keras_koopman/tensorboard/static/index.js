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
.now { stroke: var(--accent); stroke-width: 1; }
.kk-tip { position: fixed; pointer-events: none; background: var(--panel); color: var(--fg);
          border: 1px solid var(--line); border-radius: 3px; padding: 4px 6px;
          white-space: pre; display: none; box-shadow: 0 1px 3px rgba(0,0,0,.3); }
`;

const TRACE_COLOURS = ["#1976d2", "#f57c00", "#388e3c", "#d32f2f", "#7b1fa2"];

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

function drawPlane(svg, entry, tip) {
  svg.replaceChildren();
  const size = Number(svg.getAttribute("width"));
  const pad = 28;
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
  for (const t of [-1, 1]) {
    svg.append(svgEl("text", { x: X(t) + 3, y: cy + 12 }, String(t)));
    svg.append(svgEl("text", { x: cx + 4, y: Y(t) - 3 }, `${t}i`));
  }
  svg.append(svgEl("text", { x: size - pad, y: cy - 6 }, "Re"));
  svg.append(svgEl("text", { x: cx + 6, y: pad / 2 + 8 }, "Im"));
  const amplitudes = entry ? entry.amplitudes : [];
  const known = amplitudes.filter((a) => a !== null && a > 0);
  const largest = known.length ? Math.max(...known) : 1;
  eig.forEach(([re, im], i) => {
    const amplitude = amplitudes[i];
    const residual = entry.residuals[i];
    // Area proportional to |amplitude| (relative to the largest), from 3 to 10 px radius.
    const radius = amplitude === null ? 4 : 3 + 7 * Math.sqrt(Math.max(amplitude, 0) / largest);
    const mark = svgEl("circle", {
      class: "eig", cx: X(re), cy: Y(im), r: radius.toFixed(2), fill: residualColour(residual),
      "data-index": i,
    });
    const modulus = Math.hypot(re, im);
    const text = `λ = ${fmt(re)} ${im < 0 ? "−" : "+"} ${fmt(Math.abs(im))}i\n` +
      `|λ| = ${fmt(modulus)}\n|amplitude| = ${fmt(amplitude)}\nresidual = ${fmt(residual)}`;
    mark.append(svgEl("title", {}, text));
    mark.addEventListener("mousemove", (event) => {
      tip.textContent = text;
      tip.style.display = "block";
      tip.style.left = `${event.clientX + 12}px`;
      tip.style.top = `${event.clientY + 12}px`;
    });
    mark.addEventListener("mouseleave", () => { tip.style.display = "none"; });
    svg.append(mark);
  });
}

function drawModuli(svg, steps, current) {
  svg.replaceChildren();
  const width = Number(svg.getAttribute("width"));
  const height = Number(svg.getAttribute("height"));
  const pad = { left: 40, right: 10, top: 10, bottom: 22 };
  if (!steps.length) return;
  const first = steps[0].step;
  const last = steps[steps.length - 1].step;
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
  svg.append(svgEl("text", { x: width - pad.right - 30, y: height - 4 }, String(last)));
  for (let k = 0; k < LEADING; k++) {
    const points = steps
      .filter((s) => s.eigenvalues.length > k)
      .map((s) => `${X(s.step).toFixed(1)},${Y(Math.hypot(...s.eigenvalues[k])).toFixed(1)}`);
    if (points.length) {
      const line = svgEl("polyline", { class: "trace", points: points.join(" "),
                                       stroke: TRACE_COLOURS[k] });
      line.append(svgEl("title", {}, `|λ${k + 1}| over steps`));
      svg.append(line);
    }
  }
  if (current) {
    svg.append(svgEl("line", { class: "now", x1: X(current.step), y1: Y(0), x2: X(current.step),
                               y2: Y(top) }));
  }
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
  const moduli = svgEl("svg", { id: "moduli", width: 420, height: 200, role: "img" });
  moduliCard.append(moduli);
  const description = el("div", { id: "description", class: "kk-note" });
  moduliCard.append(description);
  plots.append(planeCard, moduliCard);
  const tip = el("div", { class: "kk-tip", id: "tooltip" });
  root.append(controls, status, plots, tip);
  document.body.append(root);

  let tags = {};
  let steps = [];

  function showStep() {
    const entry = steps[Number(slider.value)];
    stepLabel.textContent = entry ? `${entry.step} (${Number(slider.value) + 1}/${steps.length})` : "";
    drawPlane(plane, entry, tip);
    drawModuli(moduli, steps, entry);
    plane.setAttribute("data-step", entry ? String(entry.step) : "");
    plane.setAttribute("data-count", entry ? String(entry.eigenvalues.length) : "0");
  }

  async function loadSpectra() {
    const run = runSelect.value;
    const tag = tagSelect.value;
    if (!run || !tag) return;
    status.textContent = "Loading…";
    try {
      const params = new URLSearchParams({ run, tag });
      const body = await getJson(`./spectra?${params}`);
      steps = body.steps;
      const notes = [`${steps.length} steps`];
      if (body.downsampled) notes.push("downsampled");
      status.textContent = notes.join(", ");
      for (const warning of body.warnings) {
        status.append(el("div", { class: "kk-warn" }, warning));
      }
      description.textContent = tags[run][tag].description || "";
      slider.max = String(Math.max(steps.length - 1, 0));
      slider.value = slider.max;
      showStep();
      root.setAttribute("data-ready", "true");
    } catch (error) {
      status.textContent = `Could not load the spectra: ${error.message}`;
    }
  }

  function fillTags() {
    tagSelect.replaceChildren();
    for (const tag of Object.keys(tags[runSelect.value] || {}).sort()) {
      tagSelect.append(new Option(tag.replace(/^koopman\//, ""), tag));
    }
  }

  runSelect.addEventListener("change", () => { fillTags(); loadSpectra(); });
  tagSelect.addEventListener("change", loadSpectra);
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
  await loadSpectra();
}
