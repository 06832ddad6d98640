import { AGGREGATIONS, strategyOf, type AggregationConfig } from '../aggregation/robust.js';
import type { AggregationStrategy } from '../aggregation/strategy.js';

/**
 * The strategy of a cluster's configuration. Replicas fold their own clients' updates into partial aggregates and the
 * leader merges them (`Aggregation.merge`), so only strategies whose partials merge exactly can run on several
 * replicas. Throws RangeError naming the strategy, why it cannot, and what can (the mergeable strategies, or one
 * replica on the embedded store); and what `strategyOf` throws for a bad parameter.
 */
export function clusterStrategyOf(cfg: AggregationConfig): AggregationStrategy {
  const strategy = strategyOf(cfg);
  if (strategy.mergeable && strategy.decodePartial) return strategy;
  const mergeable = AGGREGATIONS.filter((name) => strategyOf({ strategy: name, clipNorm: 1 }).mergeable);
  throw new RangeError(
    `aggregation ${cfg.strategy} cannot run on several replicas: each replica sends the leader a partial aggregate of its ` +
      `clients' updates, and a coordinate-wise ${cfg.strategy === 'median' ? 'median' : 'order statistic'} cannot be merged ` +
      `from partials (it needs every update of a round in one place). Use ${mergeable.join(' or ')}, or serve one replica ` +
      `on the embedded store (--data DIR)`,
  );
}
