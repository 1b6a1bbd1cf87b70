'use strict';

/**
 * product service
 */

const { factories } = require('@strapi/strapi');

module.exports = factories.createCoreService('api::product.product');
