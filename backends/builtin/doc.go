// Package builtin holds the in-process default backends: a scoring Router
// and a Bot that always hands the conversation to a human. They run when
// no plugin is configured and are the supervisor's fallbacks when a plugin
// is down. The FAQ bot (YAML knowledge base, gse segmentation for Chinese,
// calibrated confidence) is in the subpackage builtin/faq.
//
// Both types are safe for concurrent use and allocate only their results
// (ScoringRouter.Pick, the dispatcher's decision, allocates nothing);
// neither blocks, so unlike plugin-backed backends they may be called
// directly, but callers should still treat them through the backends
// interfaces and keep them off event loops for uniformity.
package builtin
