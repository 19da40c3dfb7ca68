//! The compiled stage graph, as text and as Graphviz DOT.

use std::fmt::{self, Write};

use super::logic::Logic;

/// One stage of the compiled graph.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    /// How the stage reads, when it shares its source with other stages.
    pub(crate) note: Option<String>,
    pub(crate) ops: Vec<String>,
    pub(crate) dispatcher: String,
}

impl Node {
    pub(crate) fn new<L: Logic>(
        name: String,
        kind: &'static str,
        logic: &L,
        dispatcher: &str,
    ) -> Self {
        let mut ops = Vec::new();
        logic.describe(&mut ops);
        Node {
            name,
            kind,
            note: None,
            ops,
            dispatcher: dispatcher.to_string(),
        }
    }
}

impl Node {
    /// The stage's kind, and how it reads when it shares its source.
    fn describe_kind(&self) -> String {
        match &self.note {
            Some(note) => format!("{}, {note}", self.kind),
            None => self.kind.to_string(),
        }
    }
}

/// Stages and subscriptions, built while a flow compiles.
#[derive(Debug, Default, Clone)]
pub(crate) struct Graph {
    pub(crate) nodes: Vec<Node>,
    /// (producer node, consumer node)
    pub(crate) edges: Vec<(usize, usize)>,
}

impl Graph {
    pub(crate) fn add(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    pub(crate) fn connect(&mut self, from: usize, to: usize) {
        self.edges.push((from, to));
    }
}

/// What a flow compiles to: which operators fused into which stage, each stage's
/// dispatcher, and who subscribes to whom. `Display` gives the text form.
///
/// ```
/// use flowstage::flow::{Flow, Partition};
/// let explained = Flow::from_iter(0..10u32)
///     .map(|x| x + 1)
///     .filter(|x| x % 2 == 0)
///     .partition(Partition::new().stages(2))
///     .reduce(|| 0u32, |x, sum| sum + x)
///     .emit_state()
///     .explain()?;
/// let text = explained.to_string();
/// assert!(text.contains("map → filter"));
/// assert!(explained.dot().starts_with("digraph flow {"));
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Explain {
    pub(crate) graph: Graph,
}

impl Explain {
    /// The graph in Graphviz DOT.
    pub fn dot(&self) -> String {
        let mut dot = String::from("digraph flow {\n  rankdir=LR;\n  node [shape=box];\n");
        for (index, node) in self.graph.nodes.iter().enumerate() {
            let ops = if node.ops.is_empty() {
                String::new()
            } else {
                format!("\\n{}", node.ops.join(" → "))
            };
            let _ = writeln!(
                dot,
                "  s{index} [label=\"{} ({}){ops}\\ndispatch: {}\"];",
                escape(&node.name),
                escape(&node.describe_kind()),
                escape(&node.dispatcher)
            );
        }
        for (from, to) in &self.graph.edges {
            let _ = writeln!(dot, "  s{from} -> s{to};");
        }
        dot.push_str("}\n");
        dot
    }

    /// The number of stages.
    pub fn stages(&self) -> usize {
        self.graph.nodes.len()
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

impl fmt::Display for Explain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, node) in self.graph.nodes.iter().enumerate() {
            let ops = if node.ops.is_empty() {
                "-".to_string()
            } else {
                node.ops.join(" → ")
            };
            let into: Vec<String> = self
                .graph
                .edges
                .iter()
                .filter(|(from, _)| *from == index)
                .map(|(_, to)| to.to_string())
                .collect();
            writeln!(
                f,
                "stage {index} {} ({}): {ops}; dispatch {}{}",
                node.name,
                node.describe_kind(),
                node.dispatcher,
                if into.is_empty() {
                    String::new()
                } else {
                    format!(" -> {}", into.join(", "))
                }
            )?;
        }
        Ok(())
    }
}
