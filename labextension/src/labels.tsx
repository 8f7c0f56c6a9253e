/**
 * Long XNAT labels (projects, subjects, experiments, scans) and dataset names:
 * shown whole where there is room, cut with an ellipsis by CSS where there is
 * not — and then always with the full text in a `title` tooltip, so nothing is
 * only truncated.
 */
import * as React from 'react';

/** The tooltip of a label: the label, then what else identifies it (e.g. its XNAT path) when different. */
export function labelTitle(label: string, ...more: (string | null | undefined)[]): string {
  const parts = [label, ...more.filter((m): m is string => !!m && m !== label)];
  return parts.join(' — ');
}

/** One line of text, ellipsis when too long, full text (and `extra`) in its title. */
export function Trunc(props: { text: string; className?: string; extra?: string | null; testid?: string }): JSX.Element {
  return (
    <span className={`xnat-hpc-trunc${props.className ? ' ' + props.className : ''}`} title={labelTitle(props.text, props.extra)} data-testid={props.testid}>
      {props.text}
    </span>
  );
}
