"""What the user sees of a result, a comparison or a sweep: the terminal's tables (`terminal`,
`decision`, `probes`, `doctor`), the figures drawn from the probes' figure data (`figures`), the
HTML pages from Jinja2 templates (`layout`, `html`, templates/) and where pages and PNG files
are written (`pictures`). It reads documents; it never runs anything, and imports only the
statistics and the floors below them (result, plan, weights, kvprobe.api, kvprobe.infra)."""
