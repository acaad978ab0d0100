{#- Quantities keep the warehouse contract's precision on every adapter. -#}
{% macro type_quantity() -%}
    {{ return(adapter.dispatch('type_quantity', 'metering')()) }}
{%- endmacro %}

{% macro default__type_quantity() -%}
    {{ api.Column.numeric_type('numeric', 38, 12) }}
{%- endmacro %}
