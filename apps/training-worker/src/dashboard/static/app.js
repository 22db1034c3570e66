/*
 * The operator's dashboard (no build step). Reads the worker's read-only API
 * with the bearer token the page was opened with (?token=, then kept in
 * sessionStorage and removed from the address bar), and follows
 * /api/stream (server-sent events, read through fetch so the token travels in
 * the Authorization header). Images of the private bucket come through the
 * API too, as blobs.
 */
(function () {
  'use strict';

  var TOKEN_KEY = 'trainingWorkerDashboardToken';
  var state = { jobId: null, chart: null, images: {}, logLines: [], lastJob: null, controller: null, connected: false };
  window.__dashboard = state;

  // --- token: once from ?token=, then from the session ---
  (function takeToken() {
    var params = new URLSearchParams(location.search);
    var t = params.get('token');
    if (t) {
      sessionStorage.setItem(TOKEN_KEY, t);
      params.delete('token');
      var rest = params.toString();
      history.replaceState(null, '', location.pathname + (rest ? '?' + rest : '') + location.hash);
    }
  })();

  function headers() {
    var t = sessionStorage.getItem(TOKEN_KEY);
    return t ? { Authorization: 'Bearer ' + t } : {};
  }

  function $(id) { return document.getElementById(id); }

  function esc(v) {
    return String(v === null || v === undefined ? '' : v).replace(/[&<>"']/g, function (c) {
      return { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c];
    });
  }

  function duration(s) {
    if (s === null || s === undefined) return '–';
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }

  function time(iso) { return iso ? new Date(iso).toLocaleString() : '–'; }

  function stepText(j) {
    if (j.step === null || j.step === undefined) return '–';
    return j.step + (j.totalSteps ? ' / ' + j.totalSteps : '');
  }

  function showProblem(msg) {
    var p = $('problem');
    p.hidden = !msg;
    p.textContent = msg || '';
  }

  function setLive(text, ok) {
    var l = $('live');
    l.textContent = text;
    l.className = 'badge ' + (ok ? 's-COMPLETED' : 's-CANCELLED');
  }

  // --- overview ---
  function jobRow(j, cells) {
    return '<tr data-job-id="' + esc(j.id) + '"' + (j.id === state.jobId ? ' class="selected"' : '') + '>' + cells.map(function (c) { return '<td>' + c + '</td>'; }).join('') + '</tr>';
  }

  function jobLabel(j) { return esc(j.name || j.id) + '<br><span class="muted">' + esc(j.id) + '</span>'; }

  function badge(status) { return '<span class="badge s-' + esc(status) + '">' + esc(status) + '</span>'; }

  // A table body is replaced only when its content changed: a row under the pointer stays clickable.
  function setRows(tableId, html) {
    var body = $(tableId).tBodies[0];
    if (body.getAttribute('data-html') === html) return;
    body.setAttribute('data-html', html);
    body.innerHTML = html;
  }

  function renderOverview(o) {
    $('worker-id').textContent = o.worker.id + ' · ' + o.worker.environment;
    setRows('slots', o.slots.map(function (s) {
      var vram = s.vramFreeGb !== null ? s.vramFreeGb + ' of ' + s.vramTotalGb + ' GB' : '<span class="muted" title="' + esc(s.vramNote) + '">n/a</span>';
      var j = s.job;
      var cells = [esc(s.id), esc(s.name) + (s.vramTotalGb ? ' (' + s.vramTotalGb + ' GB)' : ''), vram,
        j ? '<span title="' + esc(j.id) + '">' + esc(j.name || j.id) + '</span>' : '<span class="muted">free</span>', j ? badge(j.status) : '', j ? stepText(j) : '', j ? duration(j.leaseAgeSeconds) : ''];
      return j ? jobRow(j, cells) : '<tr>' + cells.map(function (c) { return '<td>' + c + '</td>'; }).join('') + '</tr>';
    }).join(''));
    $('preparing').textContent = o.preparing.length
      ? 'Preparing (no slot yet): ' + o.preparing.map(function (j) { return (j.name || j.id) + ' ' + j.status + ', lease ' + duration(j.leaseAgeSeconds); }).join('; ')
      : '';
    $('queue-total').textContent = '(' + o.queue.total + ' queued)';
    setRows('queue', o.queue.jobs.map(function (j) {
      return jobRow(j, [String(j.position), jobLabel(j), esc(j.modelType), String(j.priority), duration(j.waitingSeconds)]);
    }).join('') || '<tr><td colspan="5" class="muted">Nothing queued.</td></tr>');
    setRows('running', o.running.map(function (j) {
      return jobRow(j, [jobLabel(j), badge(j.status), stepText(j), j.loss !== null ? j.loss.toFixed(4) : '–', esc(j.workerId)]);
    }).join('') || '<tr><td colspan="5" class="muted">Nothing running.</td></tr>');
    setRows('recent', o.recent.map(function (j) {
      return jobRow(j, [jobLabel(j), badge(j.status), '<span class="reason">' + esc(j.reason || '') + '</span>', esc(j.failureClass || ''), time(j.updatedAt)]);
    }).join('') || '<tr><td colspan="5" class="muted">No finished jobs yet.</td></tr>');
  }

  document.addEventListener('click', function (ev) {
    var row = ev.target.closest && ev.target.closest('tr[data-job-id]');
    if (row) selectJob(row.getAttribute('data-job-id'));
  });

  // --- one job ---
  function selectJob(id) {
    if (id === state.jobId) return;
    state.jobId = id;
    state.logLines = [];
    state.lastJob = null;
    if (location.hash !== '#job=' + id) history.replaceState(null, '', location.pathname + location.search + '#job=' + id);
    document.querySelectorAll('tr.selected').forEach(function (r) { r.classList.remove('selected'); });
    document.querySelectorAll('tr[data-job-id="' + id + '"]').forEach(function (r) { r.classList.add('selected'); });
    // Another job: a new chart (its own scales) and its own images.
    if (state.chart) { state.chart.destroy(); state.chart = null; }
    state.checkpointSig = null;
    connect();
  }

  function renderJob(d) {
    state.lastJob = d;
    var j = d.job;
    var section = $('job-detail');
    section.hidden = false;
    section.setAttribute('data-job-id', j.id);
    section.setAttribute('data-status', j.status);
    $('job-name').textContent = j.name || j.id;
    $('job-status').textContent = j.status;
    $('job-status').className = 'badge s-' + j.status;
    $('job-id').textContent = j.id;
    $('job-type').textContent = j.modelType || '';
    $('job-attempts').textContent = 'platform attempt ' + d.attempts.platformAttempt + ', worker attempts ' + (d.attempts.workerAttemptsUsed === null ? '–' : d.attempts.workerAttemptsUsed) + ' of ' + d.attempts.workerAttemptsMax;
    $('job-lease').textContent = d.lease ? 'leased by ' + d.lease.workerId + (d.lease.thisWorker ? ' (this worker)' : '') + ' for ' + duration(d.lease.ageSeconds) : 'no lease';

    var out = $('job-outcome');
    out.hidden = !d.outcome;
    if (d.outcome) {
      out.className = 'outcome' + (d.outcome.status === 'CANCELLED' ? ' cancelled' : '');
      $('job-outcome-title').textContent = d.outcome.status === 'CANCELLED' ? 'Cancelled' : 'Failed';
      $('job-reason').textContent = d.outcome.reason || '';
      $('job-class').textContent = d.outcome.failureClass ? 'Failure class: ' + d.outcome.failureClass + (d.outcome.failureClassMeaning ? ' (' + d.outcome.failureClassMeaning + ')' : '') : '';
    }

    $('timeline').innerHTML = d.timeline.map(function (t) {
      return '<li class="' + esc(t.state) + '" data-phase="' + esc(t.phase) + '"><strong>' + esc(t.phase.toLowerCase()) + '</strong><br><span class="muted">' + (t.at ? esc(new Date(t.at).toLocaleTimeString()) : esc(t.state === 'skipped' ? 'skipped' : '–')) + '</span></li>';
    }).join('');

    var p = d.progress;
    $('job-bar').style.width = (p.percent || 0) + '%';
    $('job-step').textContent = 'step ' + stepText(p);
    $('job-loss').textContent = p.loss !== null ? 'loss ' + p.loss.toFixed(4) : '';
    $('job-eta').textContent = p.etaSeconds !== null ? 'ETA ' + duration(p.etaSeconds) : '';

    renderLoss(d.lossSeries);
    renderCheckpoints(d);
    renderPoints(d.points);
    renderLog(d.log);
  }

  function renderLoss(series) {
    var el = $('loss-chart');
    var data = [series.steps, series.losses];
    var empty = series.steps.length === 0;
    $('loss-empty').hidden = !empty;
    el.hidden = empty;
    if (empty) return;
    if (!state.chart) {
      state.chart = new uPlot({
        width: Math.max(320, el.clientWidth || 600),
        height: 220,
        scales: { x: { time: false } },
        // Steps are whole numbers: no ticks between them.
        axes: [{ label: 'step', incrs: [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 50000, 100000] }, { label: 'loss' }],
        series: [{ label: 'step' }, { label: 'loss', stroke: '#0b5cad', width: 2, points: { show: series.steps.length < 60 } }],
      }, data, el);
    } else {
      state.chart.setData(data);
    }
  }

  function imageTag(sample) {
    return '<img alt="' + esc(sample.key.split('/').pop()) + '" data-key="' + esc(sample.key) + '" data-src="' + esc(sample.url) + '">';
  }

  // Images need the Authorization header: fetched once each, shown from blob URLs.
  function loadImages(root) {
    root.querySelectorAll('img[data-src]').forEach(function (img) {
      var url = img.getAttribute('data-src');
      var cached = state.images[url];
      if (cached && cached.blobUrl) { img.src = cached.blobUrl; return; }
      if (cached) { cached.waiting.push(img); return; }
      var entry = state.images[url] = { blobUrl: null, waiting: [img] };
      fetch(url, { headers: headers() })
        .then(function (r) { if (!r.ok) throw new Error('HTTP ' + r.status); return r.blob(); })
        .then(function (b) {
          entry.blobUrl = URL.createObjectURL(b);
          entry.waiting.forEach(function (i) { i.src = entry.blobUrl; });
          entry.waiting = [];
        })
        .catch(function (e) { delete state.images[url]; entry.waiting.forEach(function (i) { i.title = 'could not load: ' + e.message; }); });
    });
  }

  function renderCheckpoints(d) {
    var sig = JSON.stringify([d.checkpoints, d.finalSamples]);
    if (sig === state.checkpointSig) return;
    state.checkpointSig = sig;
    $('checkpoints').innerHTML = d.checkpoints.map(function (c) {
      return '<div class="checkpoint" data-step="' + c.step + '"><strong>step ' + c.step + '</strong> <span class="muted">loss ' + (c.loss !== null ? c.loss.toFixed(4) : 'n/a') + ' · ' + Math.round(c.loraBytes / 1024) + ' KiB · ' + time(c.storedAt) + (c.deleted ? ' · deleted by retention' : '') + '</span>' +
        '<div class="samples">' + c.samples.map(imageTag).join('') + '</div></div>';
    }).join('') || '<p class="muted">No checkpoints stored.</p>';
    $('final-samples').innerHTML = d.finalSamples.map(imageTag).join('') || '<p class="muted">None yet.</p>';
    loadImages($('checkpoints'));
    loadImages($('final-samples'));
  }

  function renderPoints(points) {
    var s = points.summary;
    $('points-summary').textContent = s ? 'charged ' + s.charged + ', refunded ' + s.refunded + ', credited ' + s.totalCredited + ' (dataset creator ' + s.credited['dataset-creator'] + ', trainer ' + s.credited.trainer + ')' : 'no points moved';
    $('movements').tBodies[0].innerHTML = points.movements.map(function (m) {
      return '<tr><td>' + time(m.at) + '</td><td>' + esc(m.kind + (m.creditKind ? ' (' + m.creditKind + ')' : '')) + '</td><td>' + m.points + '</td><td>' + m.platformAttempt + '</td><td>' + esc(m.state) + '</td><td>' + esc(m.reason) + '</td></tr>';
    }).join('') || '<tr><td colspan="6" class="muted">No movements.</td></tr>';
  }

  function renderLog(log) {
    if (log.append) state.logLines = state.logLines.concat(log.lines).slice(-500);
    else state.logLines = log.lines.slice(-500);
    $('log-source').textContent = { live: '(live, from this worker)', stored: '(stored log)', 'job-document': '(last lines saved on the job)', none: '' }[log.source] || '';
    var pre = $('log');
    var atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 30;
    pre.textContent = state.logLines.length ? state.logLines.join('\n') : 'No log lines (the job has not run on a worker).';
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  // --- live updates: server-sent events read through fetch (EventSource cannot send headers) ---
  function connect() {
    if (state.controller) state.controller.abort();
    var controller = state.controller = new AbortController();
    var url = '/api/stream' + (state.jobId ? '?job=' + encodeURIComponent(state.jobId) : '');
    fetch(url, { headers: headers(), signal: controller.signal }).then(function (res) {
      if (res.status === 401) {
        setLive('no access', false);
        showProblem('The dashboard API refused this page: open it as /dashboard?token=<DASHBOARD_TOKEN> (the token of the worker\'s environment).');
        return;
      }
      if (!res.ok || !res.body) throw new Error('HTTP ' + res.status);
      showProblem('');
      setLive('live', true);
      var reader = res.body.getReader();
      var decoder = new TextDecoder();
      var buffer = '';
      function pump() {
        return reader.read().then(function (r) {
          if (r.done) throw new Error('stream ended');
          buffer += decoder.decode(r.value, { stream: true });
          var parts = buffer.split('\n\n');
          buffer = parts.pop();
          parts.forEach(handleEvent);
          return pump();
        });
      }
      return pump();
    }).catch(function (e) {
      if (controller.signal.aborted) return;
      setLive('reconnecting…', false);
      setTimeout(function () { if (state.controller === controller) connect(); }, 3000);
      console.warn('dashboard stream:', e.message);
    });
  }

  function handleEvent(block) {
    var type = 'message';
    var data = '';
    block.split('\n').forEach(function (line) {
      if (line.indexOf('event: ') === 0) type = line.slice(7);
      else if (line.indexOf('data: ') === 0) data += line.slice(6);
    });
    if (!data) return;
    var body = JSON.parse(data);
    if (type === 'overview') renderOverview(body);
    else if (type === 'job' && state.jobId === body.job.id) renderJob(body);
    else if (type === 'job-missing') showProblem('No training job ' + body.id + '.');
    else if (type === 'problem') showProblem('The worker could not read the dashboard data: ' + body.message);
  }

  var fromHash = /#job=([A-Za-z0-9_-]+)/.exec(location.hash);
  if (fromHash) state.jobId = fromHash[1];
  connect();
})();
