import { LabIcon } from '@jupyterlab/ui-components';

/** A stylised scanner slice with a chip: the XNAT side panel's icon. */
const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 2a8 8 0 0 1 7.9 6.6h-3.1A5 5 0 0 0 7.2 10.6H4.1A8 8 0 0 1 12 4zm0 5a3 3 0 1 1 0 6 3 3 0 0 1 0-6zm-7.9 4.4h3.1a5 5 0 0 0 9.6 0h3.1A8 8 0 0 1 4.1 13.4z"/>
  </g>
</svg>`;

export const xnatIcon = new LabIcon({ name: 'xnat-hpc-hub:xnat', svgstr: svg });
