/**
 * `softverbsd --metrics`: Prometheus text exposition, scraped before,
 * during and after real traffic between two processes.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DAEMON, DIST, freePort, loopbackAddrs, runProcess, startDaemon, type RunningDaemon } from '../helpers.js';

/** The value of one sample (name plus its exact label set), or undefined. */
function sample(text: string, series: string): number | undefined {
  for (const l of text.split('\n')) if (l.startsWith(`${series} `)) return Number(l.slice(series.length + 1));
  return undefined;
}

describe('--metrics', () => {
  let d: RunningDaemon;
  let url: string;
  const env = () => ({ ...process.env, SOFTVERBS_ROOT: d.root });
  const scrape = async () => {
    const r = await fetch(url);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    return r.text();
  };

  before(async () => {
    const [a1, a2] = loopbackAddrs(2) as [string, string];
    const port = await freePort();
    d = await startDaemon(['--device', `rxe0=${a1}`, '--device', `rxe1=${a2}`, '--metrics', String(port)]);
    const m = /metrics at (http:\/\/[^ \n]+\/metrics)/.exec(d.stderr());
    assert.ok(m, d.stderr());
    url = m[1]!;
    assert.equal(url, `http://127.0.0.1:${port}/metrics`, 'a bare port binds loopback');
  });

  after(() => d.stop());

  test('before any client: every rxe counter per device and port, resources and contexts at 0, the process metrics', async () => {
    const t = await scrape();
    for (const dev of ['rxe0', 'rxe1']) {
      for (const c of ['sent_pkts', 'rcvd_pkts', 'duplicate_request', 'out_of_seq_request', 'rcvd_rnr_err', 'send_rnr_err', 'rcvd_seq_err', 'ack_deferred', 'retry_exceeded_err', 'retry_rnr_exceeded_err', 'completer_retry_err', 'send_err', 'link_downed', 'rdma_sends', 'rdma_recvs'])
        assert.equal(sample(t, `softverbs_${c}_total{device="${dev}",port="1"}`), 0, `${c} of ${dev}`);
      for (const r of ['pd', 'mr', 'cq', 'qp', 'srq', 'ah', 'comp_channel']) assert.equal(sample(t, `softverbs_resources{device="${dev}",type="${r}"}`), 0);
      assert.equal(sample(t, `softverbs_contexts{device="${dev}"}`), 0);
    }
    assert.match(t, /^# TYPE softverbs_sent_pkts_total counter$/m);
    assert.match(t, /^# TYPE softverbs_resources gauge$/m);
    assert.match(t, /^# TYPE softverbs_command_duration_seconds histogram$/m);
    assert.equal(sample(t, 'softverbs_pinned_pages'), 0);
    assert.ok(sample(t, 'process_resident_memory_bytes')! > 10e6);
    assert.ok(sample(t, 'process_cpu_seconds_total')! > 0);
    assert.ok(sample(t, 'nodejs_eventloop_lag_seconds')! >= 0);
  });

  test('during and after a pingpong: resources and pinned pages while it runs, counters and command latency move, all back to 0 after', async () => {
    const port = await freePort();
    const tool = join(DIST, 'src', 'bin', 'ibv_rc_pingpong.js');
    const server = runProcess(process.execPath, [tool, '-d', 'rxe0', '-g', '0', '-p', String(port), '-n', '500'], env());
    let during = '';
    for (let i = 0; i < 100 && sample(during, 'softverbs_resources{device="rxe0",type="qp"}') !== 1; i++) {
      await new Promise((r) => setTimeout(r, 50));
      during = await scrape();
    }
    assert.equal(sample(during, 'softverbs_resources{device="rxe0",type="qp"}'), 1, during);
    for (const r of ['pd', 'mr', 'cq']) assert.equal(sample(during, `softverbs_resources{device="rxe0",type="${r}"}`), 1);
    assert.equal(sample(during, 'softverbs_contexts{device="rxe0"}'), 1);
    assert.ok(sample(during, 'softverbs_pinned_pages')! >= 1, 'the server\'s registered buffer');
    const client = await runProcess(process.execPath, [tool, '-d', 'rxe1', '-g', '0', '-p', String(port), '-n', '500', '127.0.0.1'], env());
    assert.equal(client.code, 0, client.out);
    assert.equal((await server).code, 0);
    const t = await scrape();
    for (const dev of ['rxe0', 'rxe1']) {
      assert.ok(sample(t, `softverbs_sent_pkts_total{device="${dev}",port="1"}`)! >= 500, `${dev} sent`);
      assert.ok(sample(t, `softverbs_rcvd_pkts_total{device="${dev}",port="1"}`)! >= 500, `${dev} received`);
      assert.equal(sample(t, `softverbs_resources{device="${dev}",type="qp"}`), 0);
    }
    assert.equal(sample(t, 'softverbs_pinned_pages'), 0);
    assert.equal(sample(t, 'softverbs_command_duration_seconds_count{command="create_qp"}'), 2);
    assert.equal(sample(t, 'softverbs_command_duration_seconds_count{command="reg_mr"}'), 2);
    assert.ok(sample(t, 'softverbs_command_duration_seconds_count{command="modify_qp"}')! >= 6);
    assert.ok(sample(t, 'softverbs_command_duration_seconds_sum{command="modify_qp"}')! > 0);
    assert.equal(sample(t, 'softverbs_command_duration_seconds_bucket{le="+Inf",command="create_qp"}'), 2);
  });

  test('only /metrics is served; a bad --metrics is a usage error', async () => {
    assert.equal((await fetch(url.replace('/metrics', '/'))).status, 404);
    const bad = spawnSync(process.execPath, [DAEMON, '--metrics', 'nohost:99999'], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--metrics "nohost:99999": expected \[HOST:\]PORT/);
  });
});
