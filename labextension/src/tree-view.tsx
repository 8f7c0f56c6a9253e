/** The XNAT browser tree (React), rendering a TreeModel. */
import * as React from 'react';

import { formatCount, formatSize } from './format';
import { labelTitle } from './labels';
import { ITreeNode, TreeModel } from './tree';

function useModel(model: { subscribe(fn: () => void): () => void }): void {
  const [, setTick] = React.useState(0);
  React.useEffect(() => model.subscribe(() => setTick(t => t + 1)), [model]);
}

interface IRowProps {
  model: TreeModel;
  node: ITreeNode;
  // the node's mutable state as plain values, so React.memo re-renders only rows that changed
  checked: boolean;
  covered: boolean;
  expanded: boolean;
  loading: boolean;
  error: string | null;
}

const Row = React.memo(function Row(props: IRowProps): JSX.Element {
  const { model, node, checked, covered, expanded, loading, error } = props;
  const size = node.size !== undefined ? formatSize(node.size) : '';
  const count = node.fileCount !== undefined ? formatCount(node.fileCount) : '';
  return (
    <>
      <li
        role="treeitem"
        aria-level={node.depth + 1}
        aria-expanded={node.expandable ? expanded : undefined}
        aria-selected={checked}
        aria-busy={loading || undefined}
        className={`xnat-hpc-tree-row xnat-hpc-kind-${node.kind}`}
        data-key={node.key}
        style={{ paddingLeft: `${node.depth * 14 + 4}px` }}
      >
        {node.expandable ? (
          <button
            className="xnat-hpc-twisty"
            aria-label={`${expanded ? 'Collapse' : 'Expand'} ${node.kind} ${node.label}`}
            onClick={() => void model.toggle(node)}
          >
            {loading ? '…' : expanded ? '▾' : '▸'}
          </button>
        ) : (
          <span className="xnat-hpc-twisty-spacer" />
        )}
        <input
          type="checkbox"
          id={`xnat-hpc-cb-${node.key}`}
          aria-label={`Select ${node.kind} ${node.label}`}
          checked={checked}
          disabled={covered}
          onChange={e => model.setSelected(node, e.currentTarget.checked)}
        />
        <label htmlFor={`xnat-hpc-cb-${node.key}`} className="xnat-hpc-tree-label xnat-hpc-trunc" title={labelTitle(node.label, node.detail, node.key)}>
          {node.label}
        </label>
        {node.role && <span className={`xnat-hpc-badge xnat-hpc-role-${node.role.toLowerCase()}`}>{node.role}</span>}
        {node.detail && (
          <span className="xnat-hpc-detail xnat-hpc-trunc" title={node.detail}>
            {node.detail}
          </span>
        )}
        {(size || count) && (
          <span className="xnat-hpc-size" title={[count, size].filter(Boolean).join(', ')}>
            {[count, size].filter(Boolean).join(', ')}
          </span>
        )}
        {error && (
          <span className="xnat-hpc-error" role="alert">
            {error}
          </span>
        )}
      </li>
    </>
  );
});

function MoreRow(props: { model: TreeModel; node: ITreeNode }): JSX.Element {
  const { model, node } = props;
  return (
    <li role="none" className="xnat-hpc-tree-more" style={{ paddingLeft: `${(node.depth + 1) * 14 + 4}px` }}>
      <button className="jp-mod-styled" disabled={node.loading} onClick={() => void model.loadMore(node)}>
        Load more {node.kind === 'project' ? 'subjects' : 'experiments'} ({node.children!.length} of {node.total})
      </button>
    </li>
  );
}

export function TreeView(props: { model: TreeModel }): JSX.Element {
  const { model } = props;
  useModel(model);
  if (model.loading && !model.roots) {
    return <div className="xnat-hpc-status">Loading projects…</div>;
  }
  if (model.error) {
    return (
      <div className="xnat-hpc-error" role="alert">
        {model.error}{' '}
        <button className="jp-mod-styled" onClick={() => void model.loadProjects()}>
          Retry
        </button>
      </div>
    );
  }
  if (model.roots && !model.roots.length) {
    return <div className="xnat-hpc-status">No XNAT project in your scope.</div>;
  }
  // children of the visible rows, in order, with their "load more" rows after each expanded paged node
  const rows: JSX.Element[] = [];
  const walk = (nodes: ITreeNode[]): void => {
    for (const n of nodes) {
      rows.push(
        <Row
          key={n.key}
          model={model}
          node={n}
          checked={model.isSelected(n) || model.isCovered(n)}
          covered={model.isCovered(n)}
          expanded={n.expanded}
          loading={n.loading}
          error={n.error}
        />
      );
      if (n.expanded && n.children) {
        walk(n.children);
        if (model.hasMore(n)) {
          rows.push(<MoreRow key={n.key + '#more'} model={model} node={n} />);
        }
      }
    }
  };
  walk(model.roots || []);
  return (
    <ul role="tree" aria-label="XNAT projects" aria-multiselectable="true" className="xnat-hpc-tree" data-testid="xnat-hpc-tree" id="xnat-hpc-tree">
      {rows}
    </ul>
  );
}
