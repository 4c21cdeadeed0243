// How an answer is shown, per task: bars for a classifier, boxes drawn on the photo for a
// detector, the pixelated photo beside the original for the face pixelizer.

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

export function showClassification(container, answer) {
  const bars = element("div", { class: "bars", "data-testid": "predictions" });
  for (const { label, score } of answer.predictions) {
    const fill = element("div", { class: "fill" });
    fill.style.width = `${(100 * score).toFixed(1)}%`;  // CSSOM: the page's CSP refuses style attributes
    bars.append(element("div", { class: "bar" },
      element("span", { class: "label", text: label }),
      element("div", { class: "track" }, fill),
      element("span", { class: "score", text: `${(100 * score).toFixed(1)} %` })));
  }
  container.append(bars);
}

// A class's colour, as the server draws it (handlers/tasks/detector.py: hues by the golden ratio).
function classColour(index) {
  const hue = (index * 0.618033988749895) % 1;
  return `hsl(${Math.round(hue * 360)}, 80%, 48%)`;
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this image"));
    image.src = URL.createObjectURL(file);
  });
}

// The photo with the detections at or above `minimum` confidence drawn in the page from the
// JSON; hovering a box shows its class and confidence. Returns a function that redraws for
// another minimum, without a new request.
export async function showDetections(container, file, answer, minimum, caption) {
  const image = await loadImage(file);
  const canvas = element("canvas", { "data-testid": "detections", "data-model": answer.model });
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const count = element("figcaption");
  container.append(element("figure", {}, canvas, count));
  const context = canvas.getContext("2d");
  let shown = [];

  function draw(threshold) {
    shown = answer.detections.filter((d) => d.confidence >= threshold);
    context.drawImage(image, 0, 0);
    const line = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 300));
    context.lineWidth = line;
    context.font = `${Math.max(12, 6 * line)}px system-ui, sans-serif`;
    for (const d of shown) {
      context.strokeStyle = context.fillStyle = classColour(d.class_index);
      context.strokeRect(d.left, d.top, d.right - d.left, d.bottom - d.top);
      const text = `${d.class_name} ${d.confidence.toFixed(2)}`;
      const width = context.measureText(text).width + 6;
      const height = 6 * line + 6;
      const y = d.top - height >= 0 ? d.top - height : d.top;
      context.fillRect(d.left, y, width, height);
      context.fillStyle = "#fff";
      context.fillText(text, d.left + 3, y + height - 5);
    }
    canvas.dataset.boxes = String(shown.length);
    count.textContent = `${caption ? caption + " — " : ""}${shown.length} of ${answer.detections.length} ` +
      `detections at confidence ≥ ${threshold.toFixed(2)}`;
  }

  const tooltip = element("div", { class: "tooltip", hidden: "" });
  document.body.append(tooltip);
  canvas.addEventListener("mousemove", (event) => {
    const bounds = canvas.getBoundingClientRect();
    const x = (event.clientX - bounds.left) * canvas.width / bounds.width;
    const y = (event.clientY - bounds.top) * canvas.height / bounds.height;
    const under = shown.filter((d) => d.left <= x && x <= d.right && d.top <= y && y <= d.bottom);
    const smallest = under.sort((a, b) => (a.right - a.left) * (a.bottom - a.top) - (b.right - b.left) * (b.bottom - b.top))[0];
    tooltip.hidden = !smallest;
    if (smallest) {
      tooltip.textContent = `${smallest.class_name}: ${(100 * smallest.confidence).toFixed(1)} %`;
      tooltip.style.left = `${event.clientX + 12}px`;
      tooltip.style.top = `${event.clientY + 12}px`;
    }
  });
  canvas.addEventListener("mouseleave", () => { tooltip.hidden = true; });
  draw(minimum);
  return draw;
}

// The original and the anonymised photo side by side, and a download button.
export function showFaces(container, file, jpeg, faces) {
  const original = element("img", { alt: "the photo sent", src: URL.createObjectURL(file) });
  const anonymised = element("img", { alt: "the photo with every face pixelated", "data-testid": "anonymised",
    src: URL.createObjectURL(jpeg) });
  const download = element("a", { class: "button", href: anonymised.src, download: "anonymised.jpg",
    text: "Download" });
  container.append(
    element("figure", {}, original, element("figcaption", { text: "Original" })),
    element("figure", {}, anonymised, element("figcaption", { text: `Anonymised: ${faces} face(s) hidden ` }, download)));
}
