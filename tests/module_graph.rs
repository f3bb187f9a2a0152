//! The layout rule of docs/design.md §15.1: the modules of `src` import one
//! another without a cycle. The graph is read from the sources with `syn`:
//! every `crate::<module>` path a module's code names, in `use` trees, in
//! code and in macro input, test-only items left out; a directory such as
//! `src/providers/` counts as one module.
//!
//! `cargo test --test module_graph -- --nocapture` prints the graph.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::{self, Visit};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The modules a file's code names through `crate::`.
#[derive(Default)]
struct Uses(BTreeSet<String>);

/// `#[cfg(test)]` (or `#[cfg(all(test, …))]`): the item exists for tests only,
/// which may use anything.
fn test_only(attrs: &[syn::Attribute]) -> bool {
    let names_test = |list: &syn::MetaList| {
        list.tokens.to_string().split(|c: char| !c.is_alphanumeric() && c != '_').any(|word| word == "test")
    };
    attrs.iter().any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(names_test))
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item::*;
    match item {
        Const(i) => &i.attrs,
        Enum(i) => &i.attrs,
        ExternCrate(i) => &i.attrs,
        Fn(i) => &i.attrs,
        ForeignMod(i) => &i.attrs,
        Impl(i) => &i.attrs,
        Macro(i) => &i.attrs,
        Mod(i) => &i.attrs,
        Static(i) => &i.attrs,
        Struct(i) => &i.attrs,
        Trait(i) => &i.attrs,
        TraitAlias(i) => &i.attrs,
        Type(i) => &i.attrs,
        Union(i) => &i.attrs,
        Use(i) => &i.attrs,
        _ => &[],
    }
}

impl Uses {
    /// `crate :: name` anywhere in a macro's tokens.
    fn scan(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, token) in tokens.iter().enumerate() {
            match token {
                TokenTree::Group(group) => self.scan(group.stream()),
                TokenTree::Ident(ident) if ident == "crate" => {
                    if let [TokenTree::Punct(a), TokenTree::Punct(b), TokenTree::Ident(name), ..] = &tokens[i + 1..] {
                        if a.as_char() == ':' && b.as_char() == ':' {
                            self.0.insert(name.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// The modules a `use crate::…` tree reaches: `crate::x::…`, and each
    /// name of `crate::{x::…, y}`.
    fn use_tree(&mut self, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                self.0.insert(p.ident.to_string());
            }
            syn::UseTree::Name(n) => {
                self.0.insert(n.ident.to_string());
            }
            syn::UseTree::Rename(r) => {
                self.0.insert(r.ident.to_string());
            }
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.use_tree(t)),
            syn::UseTree::Glob(_) => {}
        }
    }
}

impl<'ast> Visit<'ast> for Uses {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !test_only(item_attrs(item)) {
            visit::visit_item(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !test_only(&f.attrs) {
            visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if let syn::UseTree::Path(p) = &u.tree {
            if p.ident == "crate" {
                self.use_tree(&p.tree);
            }
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let mut segments = path.segments.iter();
        if let (Some(first), Some(second)) = (segments.next(), segments.next()) {
            if first.ident == "crate" {
                self.0.insert(second.ident.to_string());
            }
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.scan(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }
}

/// The modules `source` names through `crate::`.
fn imports(source: &str) -> BTreeSet<String> {
    let file = syn::parse_file(source).expect("a Rust source file");
    let mut uses = Uses::default();
    uses.visit_file(&file);
    uses.0
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// Each module of `src` (a file `src/x.rs`, or everything under `src/x/`)
/// and the modules it uses. `lib.rs` only declares them; `src/bin/` is
/// another crate.
fn module_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = Graph::new();
    for path in rust_files(&src) {
        let relative = path.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_str().unwrap();
        let module = first.trim_end_matches(".rs");
        if module == "lib" || module == "bin" {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut used = imports(&source);
        used.remove(module);
        graph.entry(module.to_string()).or_default().extend(used);
    }
    graph
}

/// The modules of `graph` that reach one another (its strongly connected
/// components of more than one module): each holds a cycle or several.
fn tangles(graph: &Graph) -> Vec<BTreeSet<String>> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(node) = todo.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|m| (m, reach(m))).collect();
    let mut tangles: Vec<BTreeSet<String>> = Vec::new();
    for (module, reaches) in &reached {
        let tangle: BTreeSet<String> =
            reaches.iter().filter(|other| reached.get(other).is_some_and(|back| back.contains(*module))).cloned().collect();
        if !tangle.is_empty() && !tangles.contains(&tangle) {
            tangles.push(tangle);
        }
    }
    tangles
}

#[test]
fn no_import_cycle_among_src_modules() {
    let graph = module_graph();
    for (module, uses) in &graph {
        println!("{module} -> {}", uses.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    assert!(graph.contains_key("dispatch") && graph.contains_key("providers"), "the graph was read: {graph:?}");
    assert!(graph["shell"].contains("dispatch") && graph["providers"].contains("config"), "imports were found: {graph:?}");
    let tangles = tangles(&graph);
    assert!(tangles.is_empty(), "modules that import one another in a cycle: {tangles:?}");
}

#[test]
fn the_reader_sees_what_a_module_uses_and_finds_cycles() {
    let source = r#"
        use crate::a::B;
        // use crate::commented::X;
        use crate::{c::D, e, f as g};
        use std::fmt;
        fn f() -> crate::h::T { crate::i::j(); println!("{}", crate::k::L); "crate::string::X" }
        #[cfg(test)]
        fn for_tests() { crate::t::x(); }
        struct S;
        impl S {
            #[cfg(test)]
            fn for_tests_too() { crate::u::x(); }
        }
        #[cfg(test)]
        mod tests {
            use crate::v::V;
        }
        fn after_the_tests() { crate::w::x(); }
    "#;
    let found: Vec<String> = imports(source).into_iter().collect();
    assert_eq!(found, ["a", "c", "e", "f", "h", "i", "k", "w"]);

    let graph: Graph = [("a", &["b"][..]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]
        .iter()
        .map(|(m, uses)| (m.to_string(), uses.iter().map(|u| u.to_string()).collect()))
        .collect();
    let abc: BTreeSet<String> = ["a", "b", "c"].iter().map(|m| m.to_string()).collect();
    assert_eq!(tangles(&graph), [abc]);
    let mut acyclic = graph;
    acyclic.insert("c".into(), BTreeSet::new());
    assert!(tangles(&acyclic).is_empty());
}
