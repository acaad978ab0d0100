{#- The partition window Dagster passes as vars, as timestamps with time zone. Half-open. -#}

{% macro utc_timestamp(literal) -%}
    {{ return(adapter.dispatch('utc_timestamp', 'metering')(literal)) }}
{%- endmacro %}

{% macro default__utc_timestamp(literal) -%}
    cast('{{ literal }}' as timestamp with time zone)
{%- endmacro %}

{% macro bigquery__utc_timestamp(literal) -%}
    timestamp('{{ literal }}')
{%- endmacro %}

{% macro window_start() -%}
    {{ utc_timestamp(var('min_date')) }}
{%- endmacro %}

{% macro window_end() -%}
    {{ utc_timestamp(var('max_date')) }}
{%- endmacro %}

{#- Rows whose instant lies in the window, or whose [start, end) span overlaps it. -#}
{% macro in_window(start_column, end_column=none) -%}
    {%- if end_column is none -%}
    {{ start_column }} >= {{ window_start() }} and {{ start_column }} < {{ window_end() }}
    {%- else -%}
    {{ end_column }} > {{ window_start() }} and {{ start_column }} < {{ window_end() }}
    {%- endif -%}
{%- endmacro %}

{#- Pre-hook of every incremental model: drop what this window is about to rebuild, in the same
    transaction as the insert, so re-running a partition replaces it and never adds twice. -#}
{% macro delete_window(start_column, end_column=none) -%}
    {%- if is_incremental() -%}
    delete from {{ this }} where {{ in_window(start_column, end_column) }}
    {%- endif -%}
{%- endmacro %}
