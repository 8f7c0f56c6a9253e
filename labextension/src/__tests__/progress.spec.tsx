import * as React from 'react';
import { act } from 'react';
import { createRoot, Root } from 'react-dom/client';

import { diffJobs, JobListModel, STATE_INFO, stateInfo } from '../jobs';
import { Trunc, labelTitle } from '../labels';
import { DEFAULT_POLL, frequencyFor } from '../poller';
import { formatEta, formatRate, jobStaging, sameProgress, StagingBar, stagingPercent, stagingText } from '../progress';
import { IJob, IStagingProgress, JobState } from '../types';

(globalThis as any).IS_REACT_ACT_ENVIRONMENT = true;

const MiB = 2 ** 20;

function progress(over: Partial<IStagingProgress> = {}): IStagingProgress {
  return {
    phase: 'staging',
    bytes_done: 412 * MiB,
    bytes_total: 1024 * MiB,
    files_done: 37,
    files_total: 120,
    rate: 85 * MiB,
    eta_s: 7.2,
    ...over
  };
}

function job(state: JobState, p: IStagingProgress | null = null): IJob {
  return {
    id: 'j000000000001',
    user: 'alice',
    dataset: 'a-very-long-dataset-name-of-the-whole-neuro-mri-cohort-baseline-t1w-and-t2w',
    dataset_version: 1,
    manifest_sha256: '',
    script: 'train.py',
    script_sha256: 'b'.repeat(64),
    resources: { partition: 'secure', cpus: 1, memory: 2 ** 31, gpus: 0, walltime: 3600 },
    state,
    slurm_job_id: null,
    created: '2026-11-23T09:00:00Z',
    updated: '2026-11-23T09:00:00Z',
    started: null,
    ended: null,
    exit_code: null,
    message: 'staging 120 files',
    client_token: null,
    progress: p
  };
}

describe('staging progress text', () => {
  it('says bytes, files, rate and time left in one line', () => {
    expect(stagingText(progress())).toBe('Staging 412 MiB / 1.0 GiB · 37/120 files · 85 MiB/s · 8s left');
  });

  it('leaves out what is not known yet', () => {
    expect(stagingText(progress({ bytes_done: 0, files_done: 0, rate: null, eta_s: null }))).toBe(
      'Staging 0 B / 1.0 GiB · 0/120 files'
    );
  });

  it('formats rates and times left', () => {
    expect(formatRate(null)).toBe('');
    expect(formatRate(-1)).toBe('');
    expect(formatRate(1536)).toBe('1.5 KiB/s');
    expect(formatEta(null)).toBe('');
    expect(formatEta(0.4)).toBe('<1s left');
    expect(formatEta(185)).toBe('3m 05s left');
    expect(formatEta(Infinity)).toBe('');
  });

  it('computes the percentage by bytes, by files for an empty dataset, clamped', () => {
    expect(stagingPercent(progress())).toBe(40);
    expect(stagingPercent(progress({ bytes_total: 0, bytes_done: 0, files_done: 1, files_total: 4 }))).toBe(25);
    expect(stagingPercent(progress({ bytes_total: 0, files_total: 0 }))).toBe(0);
    expect(stagingPercent(progress({ bytes_done: 2 * 1024 * MiB }))).toBe(100);
  });

  it('shows progress only for a staging job that has some', () => {
    expect(jobStaging(job('staging', progress()))).toEqual(progress());
    expect(jobStaging(job('staging', null))).toBeNull();
    expect(jobStaging(job('queued', progress()))).toBeNull();
  });

  it('compares progress values', () => {
    expect(sameProgress(progress(), progress())).toBe(true);
    expect(sameProgress(progress(), progress({ bytes_done: 1 }))).toBe(false);
    expect(sameProgress(null, undefined)).toBe(true);
    expect(sameProgress(null, progress())).toBe(false);
  });
});

describe('jobs list with progress', () => {
  it('sees a job whose progress moved as changed, and polls fastest while one stages', () => {
    const a = job('staging', progress({ bytes_done: 1 }));
    const b = job('staging', progress({ bytes_done: 2 }));
    expect(diffJobs([a], [b]).changed).toEqual([a.id]);
    expect(diffJobs([a], [{ ...a }]).changed).toEqual([]);
    const model = new JobListModel();
    model.update([a]);
    expect(model.hasStaging).toBe(true);
    expect(model.activity).toBe('staging');
    model.update([job('running')]);
    expect(model.activity).toBe('active');
    model.update([job('done')]);
    expect(model.activity).toBe('idle');
  });

  it('has one state table with a label and tooltip per state, unknown states shown as themselves', () => {
    for (const s of ['staging', 'queued', 'running', 'collecting', 'done', 'failed', 'cancelled', 'lost']) {
      expect(STATE_INFO[s].label).toBe(s);
      expect(STATE_INFO[s].tooltip.length).toBeGreaterThan(10);
    }
    expect(stateInfo('held')).toEqual({ label: 'held', tooltip: 'held' });
  });

  it('polls staging faster than active, active faster than idle', () => {
    const f = (a: 'staging' | 'active' | 'idle') => frequencyFor(a).interval as number;
    expect(f('staging')).toBe(DEFAULT_POLL.staging);
    expect(f('staging')).toBeLessThan(f('active'));
    expect(f('active')).toBeLessThan(f('idle'));
    // a config without a staging interval never polls staging slower than active
    expect(frequencyFor('staging', { active: 2000, idle: 15000, max: 60000 }).interval).toBe(250);
    expect(frequencyFor('staging', { active: 100, idle: 15000, max: 60000 }).interval).toBe(100);
  });
});

describe('StagingBar and Trunc', () => {
  let host: HTMLElement;
  let root: Root;

  beforeEach(() => {
    host = document.createElement('div');
    document.body.appendChild(host);
    root = createRoot(host);
  });
  afterEach(() => {
    act(() => root.unmount());
    host.remove();
  });

  it('renders an accessible progress bar with its words', () => {
    act(() => root.render(<StagingBar progress={progress()} compact />));
    const bar = host.querySelector('[role="progressbar"]') as HTMLElement;
    expect(bar).not.toBeNull();
    expect(bar.getAttribute('aria-valuenow')).toBe('40');
    expect(bar.getAttribute('aria-valuemin')).toBe('0');
    expect(bar.getAttribute('aria-valuemax')).toBe('100');
    expect(bar.getAttribute('aria-valuetext')).toBe(stagingText(progress()));
    expect(bar.getAttribute('aria-label')).toBe('Staging progress');
    expect((host.querySelector('.xnat-hpc-progress-fill') as HTMLElement).style.width).toBe('40%');
    expect(host.textContent).toContain('37/120 files');
    expect(host.querySelector('.xnat-hpc-progress-compact')).not.toBeNull();
  });

  it('gives every truncated label its full text as a title', () => {
    const long = 'sub-0001_ses-baseline_acq-mprage_run-01_T1w_a-label-much-longer-than-the-panel';
    act(() => root.render(<Trunc text={long} className="xnat-hpc-dataset-name" extra="project:NEURO_MRI" />));
    const el = host.querySelector('.xnat-hpc-trunc') as HTMLElement;
    expect(el.textContent).toBe(long);
    expect(el.title).toBe(`${long} — project:NEURO_MRI`);
    expect(el.className).toBe('xnat-hpc-trunc xnat-hpc-dataset-name');
    expect(labelTitle('a', 'a', null, '', 'b')).toBe('a — b');
  });
});
