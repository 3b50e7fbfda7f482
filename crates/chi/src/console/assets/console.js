// chi console: makes the server-rendered page live. The page is complete without this script;
// with it, the sections follow the process as it changes (server-sent events from
// /ui/api/events carry each section's HTML, rendered and escaped by the server, and the
// charts' data), the filter works as you type, each balancing chart is drawn as inline SVG, and
// the write actions (when the process allows them) run from their buttons.
//
// Nothing here builds HTML from data: the sections come rendered, the charts are made with DOM
// calls and textContent.

const SVG = 'http://www.w3.org/2000/svg';

const live = document.getElementById('live');
const notice = document.getElementById('notice');
const shown = document.getElementById('shown');
const filterText = document.getElementById('filter');
const healthyOnly = document.getElementById('healthy-only');
const form = document.querySelector('form.filters');
let lastCounts = '';

/// The element that has the focus, as a key that survives a section being replaced.
function focusKey(section) {
  const el = document.activeElement;
  if (!el || !section.contains(el)) return null;
  if (el.dataset.service !== undefined && el.dataset.id !== undefined) {
    return { service: el.dataset.service, id: el.dataset.id, cls: el.className };
  }
  return el.id ? { id: el.id } : null;
}

function restoreFocus(section, key) {
  if (!key) return;
  let target = null;
  if (key.service !== undefined) {
    target = [...section.querySelectorAll('button')].find(
      (b) => b.dataset.service === key.service && b.dataset.id === key.id && b.className === key.cls);
  } else {
    target = document.getElementById(key.id);
  }
  // The element is gone (its instance left): keep the keyboard in the section.
  (target || section.closest('section')).focus({ preventScroll: true });
}

/// Replaces the sections whose HTML changed.
function applySections(sections) {
  for (const [name, html] of Object.entries(sections)) {
    if (html === null) continue;
    const section = document.querySelector(`[data-section="${name}"]`);
    if (!section || section.dataset.html === html) continue;
    const key = focusKey(section);
    section.innerHTML = html;
    section.dataset.html = html;
    restoreFocus(section, key);
  }
}

/// Hides the instance rows the filter leaves out, and the tables left without rows.
function applyFilter() {
  const text = filterText.value.trim().toLowerCase();
  const healthy = healthyOnly.checked;
  let total = 0;
  let visible = 0;
  for (const table of document.querySelectorAll('[data-section="services"] table.instances')) {
    let any = false;
    for (const row of table.querySelectorAll('tr[data-instance]')) {
      total += 1;
      const keep = (!healthy || row.dataset.health !== 'unhealthy') &&
        (text === '' || row.dataset.text.includes(text));
      row.hidden = !keep;
      if (keep) { visible += 1; any = true; }
    }
    const rows = table.querySelectorAll('tr[data-instance]').length;
    table.hidden = rows > 0 && !any;
  }
  const filtering = text !== '' || healthy;
  const message = filtering ? `Showing ${visible} of ${total} instances.` : '';
  if (shown.textContent !== message) shown.textContent = message;
}

/// Draws one horizontal bar per instance: its share of the service's picks, the busiest
/// instance's bar the full width.
function drawChart(figure, chart) {
  figure.querySelector('svg')?.remove();
  const total = chart.bars.reduce((sum, [, n]) => sum + n, 0);
  const most = chart.bars.reduce((max, [, n]) => Math.max(max, n), 0);
  const row = 26;
  const width = 640;
  const labelWidth = 200;
  const barSpace = width - labelWidth - 70;
  const height = Math.max(1, chart.bars.length) * row + 8;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('class', 'bars');
  svg.setAttribute('role', 'img');
  const title = document.createElementNS(SVG, 'title');
  const parts = chart.bars.map(([id, n]) => `${id} ${percent(n, total)}`);
  title.textContent = `${chart.service}, ${chart.strategy}: ${parts.join(', ') || 'no picks'}`;
  svg.appendChild(title);
  chart.bars.forEach(([id, n], i) => {
    const y = i * row + 4;
    const label = document.createElementNS(SVG, 'text');
    label.setAttribute('x', labelWidth - 8);
    label.setAttribute('y', y + row / 2 + 4);
    label.setAttribute('class', 'label');
    label.textContent = id.length > 26 ? `${id.slice(0, 25)}…` : id;
    const bar = document.createElementNS(SVG, 'rect');
    bar.setAttribute('x', labelWidth);
    bar.setAttribute('y', y + 3);
    bar.setAttribute('height', row - 8);
    const length = most === 0 ? 0 : (barSpace * n) / most;
    bar.setAttribute('width', n === 0 ? 0 : Math.max(1, length));
    bar.setAttribute('class', 'bar');
    bar.dataset.id = id;
    bar.dataset.picks = n;
    const value = document.createElementNS(SVG, 'text');
    value.setAttribute('x', labelWidth + length + 6);
    value.setAttribute('y', y + row / 2 + 4);
    value.setAttribute('class', 'value');
    value.textContent = percent(n, total);
    svg.append(label, bar, value);
  });
  figure.insertBefore(svg, figure.firstChild);
}

function percent(n, total) {
  return total === 0 ? '0 %' : `${((100 * n) / total).toFixed(1)} %`;
}

function drawCharts(charts) {
  const figures = document.querySelectorAll('[data-section="balancing"] figure[data-chart]');
  for (const figure of figures) {
    const chart = charts.find((c) => c.service === figure.dataset.chart);
    if (chart) drawChart(figure, chart);
  }
}

function say(text) {
  if (live.textContent !== text) live.textContent = text;
}

function apply(view) {
  applySections(view.sections);
  drawCharts(view.charts);
  applyFilter();
  const counts = `Live: ${view.services} services, ${view.instances} instances.`;
  if (counts !== lastCounts) {
    lastCounts = counts;
    say(counts);
  }
  document.body.dataset.updated = new Date().toISOString();
}

function connect() {
  const events = new EventSource('/ui/api/events');
  events.addEventListener('view', (e) => {
    try {
      apply(JSON.parse(e.data));
    } catch (err) {
      say(`Could not show an update: ${err}`);
    }
  });
  events.addEventListener('error', () => {
    lastCounts = '';
    say('Connection to the process lost; reconnecting…');
  });
}

async function deregister(button) {
  const { service, id } = button.dataset;
  if (!window.confirm(`Deregister ${id} of ${service}? Its owner may register it again.`)) return;
  button.disabled = true;
  try {
    const response = await fetch(
      `/ui/api/services/${encodeURIComponent(service)}/instances/${encodeURIComponent(id)}`,
      { method: 'DELETE', headers: { 'x-chi-console': 'write' } });
    const body = await response.text();
    notice.textContent = response.ok
      ? `Deregistered ${id} of ${service}.`
      : `Refused (${response.status}): ${body}`;
  } catch (err) {
    notice.textContent = `Could not deregister ${id}: ${err}`;
  } finally {
    button.disabled = false;
  }
}

form.addEventListener('submit', (e) => {
  e.preventDefault();
  applyFilter();
  const query = new URLSearchParams();
  if (filterText.value.trim()) query.set('q', filterText.value.trim());
  if (healthyOnly.checked) query.set('healthy', '1');
  const search = query.toString();
  history.replaceState(null, '', search ? `/ui?${search}` : '/ui');
});
filterText.addEventListener('input', applyFilter);
healthyOnly.addEventListener('change', applyFilter);
document.addEventListener('click', (e) => {
  const button = e.target.closest('button.deregister');
  if (button) deregister(button);
});

document.documentElement.classList.add('js');
applyFilter();
connect();
