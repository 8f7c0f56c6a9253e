/**
 * Staging progress of a job (`job.progress` while the server builds its bundle):
 * pure text and percentage helpers, and an accessible progress bar
 * (role=progressbar, aria-valuenow/min/max, aria-valuetext = the same words as the text).
 */
import * as React from 'react';

import { formatElapsed, formatSize } from './format';
import { IJob, IStagingProgress } from './types';

/** Percent done, 0..100 (by bytes; by files when the dataset has no bytes). */
export function stagingPercent(p: IStagingProgress): number {
  const [done, total] = p.bytes_total > 0 ? [p.bytes_done, p.bytes_total] : [p.files_done, p.files_total];
  if (!(total > 0)) {
    return 0;
  }
  return Math.max(0, Math.min(100, Math.floor((100 * done) / total)));
}

/** 89128960 → "85 MiB/s"; unknown → "". */
export function formatRate(bytesPerSecond: number | null | undefined): string {
  if (bytesPerSecond === null || bytesPerSecond === undefined || !isFinite(bytesPerSecond) || bytesPerSecond < 0) {
    return '';
  }
  return `${formatSize(bytesPerSecond)}/s`;
}

/** 7.2 → "7s left", 185 → "3m 05s left", 0.4 → "<1s left"; unknown → "". */
export function formatEta(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds) || seconds < 0) {
    return '';
  }
  return seconds < 1 ? '<1s left' : `${formatElapsed(Math.ceil(seconds))} left`;
}

/** "Staging 412 MiB / 1.0 GiB · 37/120 files · 85 MiB/s · 7s left" (unknown parts left out). */
export function stagingText(p: IStagingProgress): string {
  const parts = [
    `Staging ${formatSize(p.bytes_done)} / ${formatSize(p.bytes_total)}`,
    `${p.files_done}/${p.files_total} files`,
    formatRate(p.rate),
    formatEta(p.eta_s)
  ];
  return parts.filter(Boolean).join(' · ');
}

/** The job's staging progress when it has one to show (a staging job with a `progress`). */
export function jobStaging(job: Pick<IJob, 'state' | 'progress'>): IStagingProgress | null {
  return job.state === 'staging' && job.progress ? job.progress : null;
}

/** Whether two progress objects show the same (for the list's change detection). */
export function sameProgress(a: IStagingProgress | null | undefined, b: IStagingProgress | null | undefined): boolean {
  if (!a || !b) {
    return !a === !b;
  }
  return (
    a.bytes_done === b.bytes_done &&
    a.bytes_total === b.bytes_total &&
    a.files_done === b.files_done &&
    a.files_total === b.files_total &&
    a.rate === b.rate &&
    a.eta_s === b.eta_s
  );
}

/** A progress bar with its words next to it; `compact` for a job row. */
export function StagingBar(props: { progress: IStagingProgress; compact?: boolean }): JSX.Element {
  const { progress } = props;
  const pct = stagingPercent(progress);
  const text = stagingText(progress);
  return (
    <div className={`xnat-hpc-progress${props.compact ? ' xnat-hpc-progress-compact' : ''}`} data-testid="xnat-hpc-staging-progress">
      <div
        className="xnat-hpc-progress-track"
        role="progressbar"
        aria-label="Staging progress"
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={pct}
        aria-valuetext={text}
        title={text}
      >
        <div className="xnat-hpc-progress-fill" style={{ width: `${pct}%` }} />
      </div>
      <span className="xnat-hpc-progress-text" title={text}>
        {text}
      </span>
    </div>
  );
}
